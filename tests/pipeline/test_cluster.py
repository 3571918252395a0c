"""A real Ray cluster on one machine: a head started with `ray start --head` (dashboard on, for job
submission) and worker nodes started with `ray start --address`, each in its own process group, all
stopped by the tests. Sources and corpus on a real S3 server on loopback (moto)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from s3server import S3Server

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline.generated_media import CUT, make_sample_video
from cosmo_data.pipeline.ray_runner import ACTOR_RETRIES
from cosmo_data.storage import filesystem, location

BIN = Path(sys.executable).parent
RAY, CLI = str(BIN / "ray"), str(BIN / "cosmo-data")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalCluster:
    """`ray start` processes (--block, each its own process group) sharing one temp dir."""

    def __init__(self, env: dict[str, str]):
        self.tmpdir = Path(tempfile.mkdtemp(prefix="rc-"))  # short: Ray's socket paths live under it
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = env
        self.nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, *args: str) -> subprocess.Popen:
        node = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.nodes.append(node)
        return node

    def start_head(self, cpus: int) -> None:
        self._start(
            "--head",
            f"--port={self.port}",
            f"--num-cpus={cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.tmpdir / 'ray'}",
        )
        self.wait_for_nodes(1)

    def add_worker(self, cpus: int) -> subprocess.Popen:
        before = len(self.alive_nodes())
        node = self._start(f"--address={self.address}", f"--num-cpus={cpus}")
        self.wait_for_nodes(before + 1)
        return node

    def alive_nodes(self) -> list[dict]:
        result = subprocess.run(
            [RAY, "list", "nodes", "--address", self.dashboard, "--format", "json", "--filter", "state=ALIVE"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        listed = result.stdout.strip()  # "No resource in the cluster" while the state API has none yet
        return json.loads(listed) if result.returncode == 0 and listed.startswith("[") else []

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.alive_nodes()) < count:
            assert all(n.poll() is None for n in self.nodes), "a ray start process exited"
            assert time.monotonic() < deadline, f"the cluster did not reach {count} nodes"
            time.sleep(1)

    @staticmethod
    def kill_node(node: subprocess.Popen) -> list[int]:
        """kill -9 the node: `ray start`, its raylet, object store and every worker it started."""
        processes = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        node.wait(timeout=30)
        return [p.pid for p in processes]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(self.tmpdir)], check=False)


def ray_default_extras() -> Path:
    """A folder holding what `ray[default]` adds to `ray[data]` (aiohttp, grpcio, opencensus, ...), for the
    cluster's nodes and `ray job submit` only, through PYTHONPATH. It is not in the test environment: with
    it installed every embedded Ray of the suite starts the full dashboard (~1 s more per build). Made
    once with pip (PyPI) under $COSMO_DATA_CACHE and kept; the tests that need it skip without it."""
    import importlib.metadata
    import shutil

    import ray
    from packaging.requirements import Requirement

    cache = Path(os.environ.get("COSMO_DATA_CACHE") or Path.home() / ".cache" / "cosmo-data")
    folder = cache / f"ray-default-{ray.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"
    if not folder.is_dir():
        wanted = []
        for text in importlib.metadata.requires("ray") or []:
            requirement = Requirement(text)
            if requirement.marker and requirement.marker.evaluate({"extra": "default"}):
                requirement.marker = None
                wanted.append(str(requirement))
        staging = cache / f".{folder.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]
        made = subprocess.run([*pip, str(staging), *wanted], capture_output=True, text=True, timeout=600)
        if made.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.skip(f"cannot install ray[default]'s extras for the cluster: {made.stderr.strip()[-300:]}")
        staging.rename(folder)
    return folder


def cluster_env(s3: S3Server) -> dict[str, str]:
    """The nodes' environment: the bucket's endpoint and keys (as an instance's environment would hold
    them), token authentication as `ray start` sets it up, and quick detection of a node that is gone."""
    return {
        **os.environ,
        **s3.env,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ray_default_extras()),
        "RAY_AUTH_MODE": "token",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "2000",
        "RAY_health_check_failure_threshold": "5",
    }


@pytest.fixture(scope="module")
def cluster(s3_server) -> Iterator[LocalCluster]:
    """Two nodes of 3 CPUs: a video worker asking for 2 fits once on each, the model worker (1) anywhere."""
    local = LocalCluster(cluster_env(s3_server))
    try:
        local.start_head(cpus=3)
        local.add_worker(cpus=3)
        yield local
    finally:
        local.stop()


def test_ray_data_restarts_pool_actors_and_retries_their_batches_without_limit():
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator
    from ray.data.context import DataContext

    applied = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert {key: applied[key] for key in ACTOR_RETRIES} == ACTOR_RETRIES


def _video_rows(s3: S3Server, bucket: str, prefix: str) -> list[dict]:
    parts = [f"{bucket}/{k}" for k in s3.keys(bucket, f"{prefix}/videos/") if k.endswith(".parquet")]
    return pq.read_table(parts, filesystem=filesystem("s3")).to_pylist()


@pytest.fixture(scope="module")
def served_videos(tmp_path_factory):
    from loopback import serve_directory

    root = tmp_path_factory.mktemp("served")
    files = root / "files"
    files.mkdir()
    for k in range(4):
        make_sample_video(files / f"clip{k}.mp4", segments=[1.0, 1.0], transitions=[CUT], size=(160, 120), seed=k)
    with serve_directory(files) as server:
        yield [server.url(f"files/clip{k}.mp4") for k in range(4)]


@pytest.mark.slow
def test_ray_job_submit_builds_on_both_nodes_and_a_second_submission_resumes(cluster, s3, served_videos):
    bucket = s3.create_bucket("cluster-jobs")
    source = s3.put(bucket, "lists/urls.txt", ("\n".join(served_videos) + "\n").encode())
    out = f"s3://{bucket}/corpus"
    model_worker = "{cpus: 1, concurrency: 1, batch_size: 8}"
    entrypoint = [CLI, "build", "--source", source, "--out", out, "--config", str(TINY_CONFIG)]
    entrypoint += ["--set", "video.resources={cpus: 2, concurrency: 2}"]
    entrypoint += ["--set", "narration.enabled=false"]  # its LLM worker is not what this test places
    for section in ("asr.resources", "caption.resources", "clip_score.resources", "assign.resources"):
        entrypoint += ["--set", f"{section}={model_worker}"]
    entrypoint += ["--set", f"assign.document_resources={model_worker}", "--set", f"output.resources={model_worker}"]
    submit = [RAY, "job", "submit", "--address", cluster.dashboard, "--", *entrypoint]

    first = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "built 4/4 videos" in first.stdout, first.stdout[-3000:]
    summary = json.loads(location(f"{out}/build.json").read_text())
    nodes = {node["node_id"] for node in cluster.alive_nodes()}
    assert summary["ray"]["nodes"] == 2 and not summary["ray"]["embedded"]
    per_node = summary["videos_per_node"]
    assert set(per_node) == nodes and sum(per_node.values()) == 4  # decoded on both nodes
    rows = _video_rows(s3, bucket, "corpus")
    assert sorted(r["status"] for r in rows) == ["ok"] * 4 and {r["node_id"] for r in rows} == nodes
    # Each node's workers staged their videos' samples in the bucket, and tasks on the cluster made the
    # tars from them: every sample is in its layout's tars, and no staged part is left.
    for fmt in ("native", "mmc4", "cosmo"):
        sizes = json.loads(location(f"{out}/shards/{fmt}/sizes.json").read_text())
        assert sum(sizes.values()) == 4, (fmt, sizes)
    assert not [k for k in s3.keys(bucket, "corpus/_state/parts/") if not k.endswith("/")]

    second = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "0 groups written, 2 resumed" in second.stdout
    rows = _video_rows(s3, bucket, "corpus")
    assert len(rows) == len({r["video_id"] for r in rows}) == 4


# The node-loss build's driver, in a process of its own: Ray reads RAY_AUTH_MODE when it is imported, and a
# driver that joins with a token must set it first. argv: source, out, Ray address, victim's node id and pid.
NODE_LOSS_DRIVER = """
import json, sys, threading, time
import psutil
from cosmo_data.pipeline.build import build
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import Clip, Frame
from cosmo_data.stages.base import Resources
from cosmo_data.stages.shard_samples import ShardSamplesStage

source, out, address, victim_id, victim_pid = sys.argv[1:6]


class SlowStage:
    # A second per video: long enough to lose a node in the middle. Defined in __main__, so Ray's
    # workers get it by value.
    name = "video"
    resources = Resources(cpus=1, concurrency=3)
    batch_size = 1

    def setup(self):
        pass

    def process(self, batch):
        time.sleep(1.0)
        for record in batch:
            # A native sample for the last stage to stage: one clip, one keyframe.
            record.duration_s = 1.0
            record.clips = [Clip(0, 0.0, 1.0, "start")]
            record.frames = [Frame(0, 0, 0.5, 8, 8, record.video_id.encode() * 100)]
        return batch


def kill_node(pid):
    # kill -9 `ray start`, its raylet, object store and every worker it started
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


arrived, counts = [], {}


class Watch:
    def record_done(self, record):
        arrived.append(record.video_id)
        if "before" not in counts and record.node_id == victim_id:  # the victim has done work: kill it
            counts["before"] = len(arrived)
            threading.Thread(target=kill_node, args=(int(victim_pid),), daemon=True).start()

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


config = BuildConfig.model_validate(
    {
        "ray_address": address,
        "output": {"videos_per_shard": 3, "formats": ["native"]},
    }
)
result = build([source], out, config, progress=Watch(), stages_factory=lambda c: [SlowStage(), ShardSamplesStage(c)])
counts["after"] = len(arrived)
print(json.dumps({"counts": counts, "ok": result.ok, "failures": result.failures, "arrived": arrived}))
"""


@pytest.mark.slow
def test_a_worker_node_lost_mid_build_loses_and_duplicates_nothing(cluster, s3, tmp_path):
    victim = cluster.add_worker(cpus=1)
    victim_id = next(n["node_id"] for n in cluster.alive_nodes() if n["resources_total"].get("CPU") == 1)
    bucket = s3.create_bucket("node-loss")
    ids = [f"vid{k:08d}" for k in range(18)]  # 11 characters: YouTube ids, never downloaded
    source = s3.put(bucket, "ids.txt", ("\n".join(ids) + "\n").encode())
    out = f"s3://{bucket}/corpus"
    driver = tmp_path / "driver.py"
    driver.write_text(NODE_LOSS_DRIVER)
    run = subprocess.run(
        [sys.executable, str(driver), source, out, cluster.address, victim_id, str(victim.pid)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    counts = report["counts"]
    assert victim.wait(timeout=30) is not None and "before" in counts, report
    # Videos were still to come when the node went, and every one came back exactly once.
    assert counts["before"] < len(ids) == counts["after"] and sorted(report["arrived"]) == ids, report
    assert report["ok"] == len(ids) and report["failures"] == {}, report
    rows = _video_rows(s3, bucket, "corpus")
    assert sorted(r["video_id"] for r in rows) == ids  # nothing lost, nothing twice
    # The same in the shards, made on the nodes from the samples their workers staged.
    tars = [
        location(f"s3://{bucket}/{key}") for key in s3.keys(bucket, "corpus/shards/native/") if key.endswith(".tar")
    ]
    keys = [name for tar in tars for name in tarfile.open(fileobj=io.BytesIO(tar.read_bytes())).getnames()]
    assert sorted(keys) == sorted([f"{i}.0.jpg" for i in ids] + [f"{i}.json" for i in ids])
    assert not [k for k in s3.keys(bucket, "corpus/_state/parts/") if not k.endswith("/")]
    per_node = json.loads(location(f"{out}/build.json").read_text())["videos_per_node"]
    assert sum(per_node.values()) == len(ids) and len(per_node) >= 2
    print(f"node loss: {counts['before']} videos back before the kill, {counts['after']} after; per node {per_node}")
