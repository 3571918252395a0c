"""The one adapter between stages and Ray Data. Nothing else in the project imports ray.

Each group of consecutive stages with the same declared resources becomes one map_batches over an
actor pool (models load once per actor, in setup()), with cpus/gpus/concurrency taken from the
stages. Records travel pickled in a single binary column: they are nested and carry JPEGs and PCM
audio, never video bytes. Results stream back to the driver one batch at a time and are handed to a
callback; nothing is collected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from cosmo_data.schemas.records import VideoRecord
from cosmo_data.stages.base import Stage
from cosmo_data.storage import StorageError, is_remote


class RayConnectionError(Exception):
    """The Ray cluster named by --ray-address cannot be reached."""


# Ray's own console output is noise in a build, which shows its own progress.
QUIET = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
# Ray Data keeps each input block's bookkeeping in the driver for the whole run, and schedules each
# as one task: ~11 KB and ~10 ms apiece here. One video per block spreads videos over the pool at
# once, but at HowTo100M's 1.2M videos it would hold 13 GB before the first result. Past this many
# videos a block holds several (at 1.2M, 120: a tail of at most 120 videos on one worker).
MAX_INPUT_BLOCKS = 10_000


# A file path: every worker's setup, every stage call and every record's arrival at the driver is
# appended to it as one JSON line with wall-clock times (one machine's build; bench_build.py draws its
# timeline from it). Unset, nothing is written.
TRACE_ENV = "COSMO_DATA_TRACE"


def trace(path: str | None, event: str, **fields) -> None:
    if path:
        with open(path, "a") as file:  # one write of one short line: lines from many processes stay whole
            file.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


def seed_for_batch(seed: int, records: list[VideoRecord]) -> None:
    """Seed every random generator from the build seed and the batch's videos, so that sampling
    (e.g. whisper's temperature fallback) repeats when the same videos meet in a batch again."""
    import random

    import numpy as np

    key = hashlib.sha256(f"{seed}:{','.join(r.video_id for r in records)}".encode()).digest()
    value = int.from_bytes(key[:4], "little")
    random.seed(value)
    np.random.seed(value)
    if "torch" in sys.modules:  # only stages that use torch have imported it
        sys.modules["torch"].manual_seed(value)


def worker_groups(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive stages that declare the same resources share one actor pool.

    One process then holds all their models (one torch import, one CUDA context) and records go
    from one stage to the next in memory. On a small machine that is the difference between five
    model workers starting at once, competing with the decode for the cores, and one.
    """
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and groups[-1][0].resources == stage.resources:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


# The stage whose node a video's row names (videos.node_id): it downloads and decodes.
NODE_STAGE = "video"
# A worker node lost mid-build (its raylet and workers killed) must not fail the build: an actor of a
# pool restarts without limit on the nodes left, and the batches it held are sent again. These are Ray
# Data's defaults for actor pools (ActorPoolMapOperator._apply_default_remote_args; tests/pipeline/
# test_cluster.py checks they still are): passing them to map_batches goes through ray_remote_args,
# which Ray 2.60 deprecates. A record comes back once (a batch's output is handed on when its task has
# finished), and the build ignores a second copy of a record all the same.
ACTOR_RETRIES = {"max_restarts": -1, "max_task_retries": -1}


class _StageWorker:
    """Ray actor body: owns one instance of each stage of its group for its lifetime."""

    def __init__(self, stages: list[Stage], seed: int, trace_path: str | None = None):
        import ray

        self.stages = stages
        self.seed = seed
        self.trace_path = trace_path
        self.node_id = ray.get_runtime_context().get_node_id() if any(s.name == NODE_STAGE for s in stages) else None
        for stage in stages:
            started = time.time()
            stage.setup()
            trace(trace_path, "setup", stage=stage.name, start=started, end=time.time())

    def __call__(self, batch: dict) -> dict:
        # Each pickle is freed as soon as it is read (nothing else holds the popped array): kept, a whole
        # batch of them (PCM and cosmo videos inside) stayed in the worker beside the records to the batch's
        # end, also after ASR had dropped the audio.
        blobs = batch.pop("record")
        records = []
        for index in range(len(blobs)):
            records.append(pickle.loads(blobs[index]))
            blobs[index] = None
        for stage in self.stages:
            # The Ray batch is sized for the group's largest batch; each stage sees its own size.
            done: list[VideoRecord] = []
            for start in range(0, len(records), stage.batch_size):
                chunk = records[start : start + stage.batch_size]
                seed_for_batch(self.seed, chunk)
                started = time.time()
                done.extend(stage.process(chunk))
                videos = [r.video_id for r in chunk]
                trace(self.trace_path, "call", stage=stage.name, start=started, end=time.time(), videos=videos)
            records = done
        if self.node_id:
            for record in records:
                record.node_id = self.node_id
        return {"record": [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]}


@dataclass
class RayCluster:
    """The Ray a build ran on, as build.json records it."""

    address: str  # its GCS, host:port
    embedded: bool  # started by this build, and stopped when it ends
    nodes: int
    cpus: float
    gpus: float
    # Why some stage's worker cannot start on any node of the cluster as it is now: the build waits
    # for a node that fits (an autoscaler may add one) instead of failing.
    shortfalls: list[str] = field(default_factory=list)


@contextmanager
def ray_for_build(address: str | None, stages: list[Stage], videos: int) -> Iterator[RayCluster]:
    """Join the cluster at `address`, or start a private Ray for this build; say what it holds.

    On the way out, a Ray started here is stopped (a joined cluster only disconnected): the private
    one is sized for this build's stages, and left to the interpreter's exit Ray's hook would first
    sleep 0.5 s. A Ray the caller had started already is the caller's, and is left running.
    """
    # The driver's C++ core prints its errors on the console too, and Ray Data's actor pools make it say
    # one per pool (core_worker.cc: constructor arguments in the object store with max_restarts set):
    # only fatal ones. The notice that it read this variable is hidden below.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray

    groups = worker_groups(stages)
    trace_path = os.environ.get(TRACE_ENV)
    started_here = not ray.is_initialized()
    if started_here:
        started = time.time()
        with _detached_from_terminal():
            if address:
                _join(address)
            else:
                _start_embedded(groups, videos)
        trace(trace_path, "ray_init", start=started, end=time.time())
    try:
        yield _describe(groups, embedded=started_here and not address)
    finally:
        if started_here:
            started = time.time()
            ray.shutdown()
            trace(trace_path, "ray_shutdown", start=started, end=time.time())


LOG_LEVEL_NOTICE = "Set ray log level from environment variable"


@contextmanager
def _detached_from_terminal() -> Iterator[None]:
    """While ray.init starts Ray's processes, which inherit this process's stdin and stderr:

    - stdin is /dev/null. Started from a shell, Ray's workers share its terminal from a background
      process group, and the kernel stops one that touches the terminal (SIGTTIN/SIGTTOU). Importing
      PySceneDetect runs `ffmpeg -v quiet` with the inherited stdin, which does: every video worker
      stopped in its setup, and a build typed at a prompt hung at 0 videos.
    - stderr is caught, and passed on in order without the notice Ray's C++ core prints that it read
      RAY_BACKEND_LOG_LEVEL (logging.cc:303: "Set ray log level from environment variable ...").
    """
    saved: dict[int, int] = {}
    try:
        for fd in (0, 2):
            saved[fd] = os.dup(fd)
    except OSError:  # no such stream to keep apart
        pass
    sys.stderr.flush()
    with open(os.devnull, "rb") as nothing, tempfile.TemporaryFile() as caught:
        if 0 in saved:
            os.dup2(nothing.fileno(), 0)
        if 2 in saved:
            os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if LOG_LEVEL_NOTICE not in line:
                    sys.stderr.write(line)
            sys.stderr.flush()


def _join(address: str) -> None:
    import ray

    try:
        ray.init(address=address, **QUIET)
    except Exception as exc:  # ray raises ConnectionError, ValueError or RuntimeError here
        raise RayConnectionError(f"cannot reach Ray at {address}: {exc}{_token_hint(address)}") from exc


def _token_hint(address: str) -> str:
    # Ray turns token authentication on for clusters it starts, but sends the token only to an
    # 'auto' address; for host:port it fails with a bare "Failed to connect" once the GCS answers.
    if address == "auto" or address.startswith("ray://") or os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    return (
        " (if the cluster checks tokens, as `ray start` sets up by default, set RAY_AUTH_MODE=token, and "
        "RAY_AUTH_TOKEN unless this machine holds the token in ~/.ray/auth_token)"
    )


def _start_embedded(groups: list[list[Stage]], videos: int) -> None:
    import ray

    # Logical CPUs are scheduling tokens; give every declared actor pool a slot so a small machine
    # runs the whole pipeline (oversubscribed) instead of waiting for CPUs forever.
    wanted = sum(group[0].resources.cpus * pool_size(group, videos, os.cpu_count()) for group in groups) + 1
    # Like any Ray, the embedded one listens on the machine's network address (Ray maps a loopback
    # node IP to it), so the token authentication Ray turns on for clusters it starts is what keeps
    # others out; its notice that it did so is noise on every build.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # address="local": a Ray of our own even when `ray start` runs one on this machine (a plain
    # ray.init() would join that one, and refuses num_cpus there).
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(wanted + 0.999)), **QUIET)


def _describe(groups: list[list[Stage]], *, embedded: bool) -> RayCluster:
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    cluster = RayCluster(
        address=ray.get_runtime_context().gcs_address,
        embedded=embedded,
        nodes=len(nodes),
        cpus=sum(node.get("CPU", 0.0) for node in nodes),
        gpus=sum(node.get("GPU", 0.0) for node in nodes),
    )
    for group in groups:
        wanted = {"CPU": group[0].resources.cpus, "GPU": group[0].resources.gpus if cluster.gpus else 0.0}
        for kind, amount in wanted.items():
            largest = max((node.get(kind, 0.0) for node in nodes), default=0.0)
            if amount > largest:
                cluster.shortfalls.append(
                    f"the {', '.join(stage.name for stage in group)} worker asks for {amount:g} {kind}s, "
                    f"but no node of the Ray cluster at {cluster.address} has more than {largest:g}: the build "
                    "waits until one joins (or lower their resources in the config)"
                )
    return cluster


def check_out_reachable(cluster: RayCluster, out: object, *, shared: bool) -> None:
    """Refuse a local --out on a cluster of several nodes unless it is said to be shared: every node stages
    samples under it and writes tars there, and a folder of the head's disk would leave them on each
    worker's own (output.shared_filesystem: true when the nodes mount one filesystem there)."""
    if cluster.nodes > 1 and not shared and not is_remote(out):
        raise StorageError(
            f"--out {out} is a local folder, and the Ray cluster at {cluster.address} has {cluster.nodes} nodes: "
            "give object storage (s3://bucket/prefix), or, if every node mounts that folder at the same path, "
            "--set output.shared_filesystem=true"
        )


def pool_size(group: list[Stage], videos: int, cores: int | None = None) -> int:
    """Actors for a group: its declared concurrency, but never more than there are videos to share, nor,
    on a private Ray of this machine (`cores` given), more CPU-only workers than its cores hold: a
    cluster config's video.concurrency of 8 on a 2-core workstation would run 8 decodes at once."""
    resources = group[0].resources
    size = min(resources.concurrency, videos)
    if cores and not resources.gpus:
        size = min(size, int(cores // resources.cpus))
    return max(1, size)


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one clear line: ray.init itself retries an unreachable GCS for minutes."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectionError(f"--ray-address must be 'auto', host:port or ray://host:port, not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayConnectionError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from exc


def run_stages(
    records: Iterable[VideoRecord],
    stages: list[Stage],
    cluster: RayCluster,
    *,
    seed: int = 0,
    on_record: Callable[[VideoRecord], None],
) -> None:
    """Run records through the stages on the Ray that ray_for_build() gave, calling on_record for each
    finished record as it arrives."""
    import ray.data

    trace_path = os.environ.get(TRACE_ENV)
    trace(trace_path, "run", start=time.time())
    items = [{"record": pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL)} for r in records]
    if not items:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Ray Data's advice about pool sizes and its own deprecations are noise in the build's console.
    warnings.filterwarnings("ignore", module=r"ray\.data")

    # One video per block (up to MAX_INPUT_BLOCKS): videos are heavy and independent, so they spread
    # over the pool at once.
    videos = len(items)
    dataset = ray.data.from_items(items, override_num_blocks=min(videos, MAX_INPUT_BLOCKS))
    del items  # the blocks in Ray's object store hold them now (at 1.2M videos, ~0.9 GB less in the driver)
    for group in worker_groups(stages):
        resources = group[0].resources
        dataset = dataset.map_batches(
            _StageWorker,
            fn_constructor_args=(group, seed, trace_path),
            batch_size=max(stage.batch_size for stage in group),
            compute=ray.data.ActorPoolStrategy(
                size=pool_size(group, videos, os.cpu_count() if cluster.embedded else None)
            ),
            num_cpus=resources.cpus,
            # CPU fallback: a stage that asks for a GPU runs on CPU where the cluster has none.
            num_gpus=resources.gpus if cluster.gpus else 0,
            batch_format="numpy",
            zero_copy_batch=True,
        )
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        for blob in batch["record"]:
            record = pickle.loads(blob)
            arrived = time.time()
            on_record(record)  # writes the record's group when it is the group's last
            trace(trace_path, "record", start=arrived, end=time.time(), videos=[record.video_id])
    trace(trace_path, "run_end", start=time.time())


def on_cluster(fn: Callable[..., object]) -> Callable[..., Future]:
    """fn as a Ray task on the Ray that ray_for_build() gave: each call starts it and returns a Future of its
    result, or of fn's own exception. The build makes each group's tars this way (writer.write_shards), so
    the shard bytes go from the staged parts to the tars on the node that runs it, never to the driver.
    Zero CPUs: it moves bytes, and must not queue behind the stages' actors, which hold every CPU of a busy
    cluster. SPREAD: the tasks go to every node instead of piling up on the driver's, whose network would
    be the bottleneck again. A task lost with its node runs again elsewhere (fn must be idempotent)."""
    import ray

    task = ray.remote(num_cpus=0, scheduling_strategy="SPREAD", max_retries=3)(fn)

    def start(*args: object) -> Future:
        result: Future = Future()

        def settle(done: Future) -> None:
            try:
                result.set_result(done.result())
            except ray.exceptions.RayTaskError as exc:  # fn raised: hand on its own exception
                result.set_exception(exc.cause or exc)
            except Exception as exc:
                result.set_exception(exc)

        task.remote(*args).future().add_done_callback(settle)
        return result

    return start
