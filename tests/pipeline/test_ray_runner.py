import json
import os
import pickle
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline.generated_media import CUT, make_sample_video
from cosmo_data.pipeline.ray_runner import (
    TRACE_ENV,
    RayCluster,
    RayConnectionError,
    _StageWorker,
    check_out_reachable,
    check_ray_address,
    pool_size,
    ray_for_build,
    run_stages,
    seed_for_batch,
    worker_groups,
)
from cosmo_data.schemas.config import load_config
from cosmo_data.schemas.records import VideoRecord
from cosmo_data.stages.base import Resources
from cosmo_data.storage import StorageError, location


def draws(seed: int, ids: list[str]) -> list[float]:
    import torch

    seed_for_batch(seed, [VideoRecord(i, i, n) for n, i in enumerate(ids)])
    return [random.random(), float(torch.rand(1))]


def test_batch_seed_repeats_for_the_same_videos_and_seed_only():
    assert draws(0, ["a", "b"]) == draws(0, ["a", "b"])
    assert draws(0, ["a", "b"]) != draws(1, ["a", "b"])
    assert draws(0, ["a", "b"]) != draws(0, ["a", "c"])


@pytest.mark.parametrize("address, message", [("127.0.0.1:1", "cannot reach Ray"), ("nonsense", "must be 'auto'")])
def test_unusable_ray_address_fails_fast(address, message):
    with pytest.raises(RayConnectionError, match=message):
        check_ray_address(address)


class NotingStage:
    """A plain stage that notes on each record which process ran it and how many videos it saw."""

    def __init__(self, name: str, batch_size: int, resources: Resources):
        self.name, self.batch_size, self.resources = name, batch_size, resources

    def setup(self) -> None:
        self.pid = os.getpid()

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        for record in batch:
            record.counters[f"{self.name}_pid"] = self.pid
            record.counters[f"{self.name}_videos"] = len(batch)
        return batch


def test_a_stage_worker_lets_go_of_each_input_pickle_once_it_is_read():
    import numpy as np

    # A whole batch of pickles (PCM and cosmo videos inside) stayed beside the records to the batch's end.
    blobs = np.empty(3, dtype=object)  # what Ray Data hands the worker: an object array of bytes
    blobs[:] = [pickle.dumps(VideoRecord(f"v{n}", f"v{n}", n)) for n in range(3)]
    batch = {"record": blobs}
    out = _StageWorker([NotingStage("asr", 2, Resources())], seed=0)(batch)
    assert [pickle.loads(blob).counters["asr_videos"] for blob in out["record"]] == [2, 2, 1]
    assert "record" not in batch and list(blobs) == [None, None, None]


@pytest.mark.parametrize("max_input_blocks", [None, 3], ids=["a video per block", "several videos per block"])
def test_stages_with_equal_resources_share_one_worker_and_keep_their_batch_sizes(
    max_input_blocks, monkeypatch, tmp_path
):
    import ray
    import ray.cloudpickle

    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(trace))

    if max_input_blocks:  # as a source of more than MAX_INPUT_BLOCKS videos is read
        monkeypatch.setattr("cosmo_data.pipeline.ray_runner.MAX_INPUT_BLOCKS", max_input_blocks)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    shared = Resources(cpus=0.5)
    stages = [
        NotingStage("video", 1, Resources(cpus=0.5, concurrency=2)),
        NotingStage("asr", 2, shared),
        NotingStage("caption", 4, shared),
    ]
    assert [[s.name for s in group] for group in worker_groups(stages)] == [["video"], ["asr", "caption"]]
    done: list[VideoRecord] = []
    records = [VideoRecord(f"v{n}", f"v{n}", n) for n in range(8)]
    assert not ray.is_initialized()
    with ray_for_build(None, stages, len(records)) as cluster:
        run_stages(records, stages, cluster, on_record=done.append)
    assert not ray.is_initialized()  # the private Ray, sized for these stages, is gone with the build
    assert sorted(r.video_id for r in done) == [f"v{n}" for n in range(8)]
    assert {r.counters["video_videos"] for r in done} == {1}
    assert len({r.counters["asr_pid"] for r in done}) == 1
    assert {r.counters["asr_pid"] for r in done} == {r.counters["caption_pid"] for r in done}
    assert {r.counters["video_pid"] for r in done}.isdisjoint({r.counters["asr_pid"] for r in done})
    assert max(r.counters["asr_videos"] for r in done) <= 2 < max(r.counters["caption_videos"] for r in done) <= 4
    # The trace (COSMO_DATA_TRACE) has every worker's setup, every stage call, every record's arrival.
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    setups = {(e["stage"], e["pid"]) for e in events if e["event"] == "setup"}
    # Every worker that handled a record was set up once; with several videos a block, one of the two video
    # workers may get every block and the other none.
    assert {(name, r.counters[f"{name}_pid"]) for r in done for name in ("video", "asr", "caption")} <= setups
    assert sorted(name for name, _ in setups) in (["asr", "caption", "video"], ["asr", "caption", "video", "video"])
    for name in ("video", "asr", "caption"):
        calls = [e for e in events if e["event"] == "call" and e["stage"] == name]
        assert sorted(v for call in calls for v in call["videos"]) == sorted(r.video_id for r in done)
        assert all(call["start"] <= call["end"] for call in calls)
    arrivals = [e for e in events if e["event"] == "record"]
    assert sorted(v for e in arrivals for v in e["videos"]) == sorted(r.video_id for r in done)
    assert {e["event"] for e in events} >= {"ray_init", "run", "run_end", "ray_shutdown"}


def test_a_ray_the_caller_started_outlives_the_build():
    import ray

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        with ray_for_build(None, [NotingStage("video", 1, Resources())], videos=1) as cluster:
            # The caller's Ray, not a private one sized for the stages
            assert cluster.cpus == 1 and not cluster.embedded
        assert ray.is_initialized()
    finally:
        ray.shutdown()


def test_no_more_workers_than_videos():
    stage = NotingStage("video", 1, Resources(concurrency=8))
    assert [pool_size([stage], videos) for videos in (1, 3, 100)] == [1, 3, 8]


def test_on_this_machines_own_ray_no_more_cpu_workers_than_cores():
    video = NotingStage("video", 1, Resources(cpus=1, concurrency=8))
    models = NotingStage("asr", 1, Resources(cpus=2, concurrency=2))
    on_a_gpu = NotingStage("caption", 1, Resources(cpus=1, gpus=1, concurrency=4))
    assert [pool_size([s], 100, cores=2) for s in (video, models, on_a_gpu)] == [2, 1, 4]
    assert [pool_size([s], 100, cores=None) for s in (video, models, on_a_gpu)] == [8, 2, 4]  # a joined cluster


def test_a_local_out_on_a_cluster_of_several_nodes_is_refused_unless_shared(tmp_path):
    two_nodes = RayCluster("10.0.0.1:6379", embedded=False, nodes=2, cpus=16, gpus=0)
    with pytest.raises(StorageError, match="has 2 nodes.*output.shared_filesystem=true"):
        check_out_reachable(two_nodes, tmp_path, shared=False)
    check_out_reachable(two_nodes, tmp_path, shared=True)  # every node mounts it
    check_out_reachable(two_nodes, location("s3://bucket/corpus"), shared=False)
    check_out_reachable(RayCluster("local", embedded=True, nodes=1, cpus=2, gpus=0), tmp_path, shared=False)


def test_a_build_refuses_a_local_out_on_two_nodes_before_any_video_runs(tmp_path, monkeypatch):
    """The build itself asks (no stage runs, nothing is marked); the setting does not change what is built."""
    from cosmo_data.pipeline import build as build_module

    @contextmanager
    def two_node_ray(address, stages, videos):
        yield RayCluster("10.0.0.1:6379", embedded=False, nodes=2, cpus=16, gpus=0)

    def never(*args, **kwargs):
        raise AssertionError("no video may run")

    monkeypatch.setattr(build_module, "ray_for_build", two_node_ray)
    monkeypatch.setattr(build_module, "run_stages", never)
    sources = tmp_path / "sources.txt"
    sources.write_text("/videos/a.mp4\n")
    config = load_config(TINY_CONFIG)
    with pytest.raises(StorageError, match="2 nodes"):
        build_module.build([sources], tmp_path / "out", config, stages_factory=lambda config: [])
    assert not (tmp_path / "out" / "_state" / "groups").exists()
    shared = config.model_copy(update={"output": config.output.model_copy(update={"shared_filesystem": True})})
    assert build_module.build_fingerprint([], shared) == build_module.build_fingerprint([], config)


# A cluster as `ray start` makes one, which a build joins with --ray-address. Ray turns token
# authentication on for it by default, as on a real cluster.
RAY = str(Path(sys.executable).with_name("ray"))
CLI = str(Path(sys.executable).with_name("cosmo-data"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster(NamedTuple):
    address: str  # host:port of its GCS
    tmpdir: str  # RAY_TMPDIR that finds it, as /tmp finds a `ray start` on a workstation


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """A 4-CPU Ray head started with `ray start --block` in its own process group, stopped afterwards."""
    port = free_port()
    tmpdir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths live under it
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=4",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={tmpdir / 'ray'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmpdir / "ray" / "ray_current_cluster").exists():
            assert head.poll() is None and time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.5)
        yield Cluster(f"127.0.0.1:{port}", str(tmpdir))
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(tmpdir, ignore_errors=True)


def build_on(env: dict[str, str | None], out: Path, video: Path, *extra: str) -> subprocess.Popen:
    """`cosmo-data build` of one video with these environment variables set (None: unset)."""
    sources = out.parent / f"{out.name}.txt"
    sources.write_text(f"{video}\n")
    environment = {k: v for k, v in (os.environ | env).items() if v is not None}
    return subprocess.Popen(
        [CLI, "build", "--source", str(sources), "--out", str(out), "--config", str(TINY_CONFIG)]
        + ["--set", "narration.enabled=false", *extra],  # the real LLM narrator costs CPU seconds a clip
        env=environment,
        text=True,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "short.mp4"
    make_sample_video(path, segments=[1.0, 1.0], transitions=[CUT], size=(160, 120))
    return path


@pytest.mark.slow
def test_a_build_joins_a_running_cluster_by_address_or_by_ray_address(ray_cluster, short_video, tmp_path):
    joined = {}
    address = ray_cluster.address
    for how, env, extra in [("flag", {}, ["--ray-address", address]), ("env", {"RAY_ADDRESS": address}, [])]:
        build = build_on({"RAY_AUTH_MODE": "token"} | env, tmp_path / how, short_video, *extra)
        _, stderr = build.communicate(timeout=300)
        assert build.returncode == 0, stderr
        summary = json.loads((tmp_path / how / "build.json").read_text())
        assert summary["ok"] == 1
        joined[how] = summary["ray"]
    port = address.rpartition(":")[2]
    for ray_used in joined.values():
        assert not ray_used["embedded"] and ray_used["address"].endswith(f":{port}") and ray_used["cpus"] == 4


@pytest.mark.slow
def test_without_token_mode_the_error_says_how_to_pass_the_token(ray_cluster, short_video, tmp_path):
    build = build_on({"RAY_AUTH_MODE": None}, tmp_path / "out", short_video, "--ray-address", ray_cluster.address)
    _, stderr = build.communicate(timeout=300)
    assert build.returncode == 2
    [error] = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert f"cannot reach Ray at {ray_cluster.address}" in error and "RAY_AUTH_MODE=token" in error


@pytest.mark.slow
def test_default_build_starts_its_own_ray_beside_a_running_one(ray_cluster, short_video, tmp_path):
    # Ray's plain init() finds the running cluster through RAY_TMPDIR and would join it (refusing the
    # CPUs the build asks for).
    env = {"RAY_ADDRESS": None, "RAY_TMPDIR": ray_cluster.tmpdir, "RAY_AUTH_MODE": None}
    build = build_on(env, tmp_path / "out", short_video)
    _, stderr = build.communicate(timeout=300)
    assert build.returncode == 0, stderr
    ray_used = json.loads((tmp_path / "out" / "build.json").read_text())["ray"]
    assert ray_used["embedded"] and not ray_used["address"].endswith(":" + ray_cluster.address.rpartition(":")[2])
    assert "WARNING" not in stderr  # Ray's notice that it turned token authentication on stays out
    # Nothing but the build's own lines: no Ray C++ core line ("logging.cc:303: Set ray log level ...").
    assert [line for line in stderr.splitlines() if not line.startswith(("progress:", "warning:"))] == []
    assert "progress: 1/1 videos, 0 failed" in stderr


@pytest.mark.slow
def test_a_worker_no_node_can_hold_is_named_while_the_build_waits(ray_cluster, short_video, tmp_path):
    build = build_on(
        {"RAY_AUTH_MODE": "token"},
        tmp_path / "out",
        short_video,
        "--ray-address",
        ray_cluster.address,
        "--set",
        "asr.resources.cpus=8",
    )
    give_up = threading.Timer(120, os.killpg, (build.pid, signal.SIGKILL))  # ends the read below if no warning
    give_up.start()
    try:
        warning = next((line for line in build.stderr if line.startswith("warning:")), "")
        assert build.poll() is None  # still waiting for a node with 8 CPUs
    finally:
        give_up.cancel()
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
    # The stages that share ASR's resources (the speech rules) are named with it.
    assert re.search(r"the asr(, \w+)* worker asks for 8 CPUs", warning) and "has more than 4" in warning


def test_the_shipped_gpu_config_fits_one_gpu():
    """default.yaml is what a one-GPU workstation runs first: its pools' GPU shares must fit one GPU, or Ray
    Data would wait for a second GPU without a word."""
    from cosmo_data.pipeline.build import make_stages
    from cosmo_data.schemas.config import load_config

    config = load_config(TINY_CONFIG.with_name("default.yaml"))
    pools = worker_groups(make_stages(config))
    asked = sum(group[0].resources.gpus * group[0].resources.concurrency for group in pools)
    assert 0 < asked <= 1.0


def test_ray_starts_detached_from_the_terminal(capfd):
    """Ray's processes, started inside, read no terminal (the kernel stops a background process that
    does: builds typed at a prompt hung), and Ray's notice that it read RAY_BACKEND_LOG_LEVEL is dropped
    from stderr while all else written there is passed on."""
    from cosmo_data.pipeline.ray_runner import _detached_from_terminal

    notice = "[2026-12-07 05:07:23,500 I 1 1] logging.cc:303: Set ray log level from environment variable X to 3"
    keyboard, typing = os.pipe()  # stands for the terminal: an stdin that is not /dev/null
    original_stdin = os.dup(0)
    os.dup2(keyboard, 0)
    try:
        with _detached_from_terminal():
            child = subprocess.run(
                ["sh", "-c", f"readlink /proc/self/fd/0; echo '{notice}' >&2; echo 'a real error' >&2"],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            os.write(2, b"the driver's own line\n")
        assert os.fstat(0).st_ino == os.fstat(keyboard).st_ino  # the driver's stdin is back
    finally:
        os.dup2(original_stdin, 0)
        for fd in (original_stdin, keyboard, typing):
            os.close(fd)
    assert child.stdout.strip() == os.devnull
    assert capfd.readouterr().err == "a real error\nthe driver's own line\n"
