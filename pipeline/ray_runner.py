"""The one adapter between stages and Ray Data. Nothing else in the project imports ray.

Each group of consecutive stages with the same declared resources becomes one map_batches over an
actor pool (models load once per actor, in setup()), with cpus/gpus/concurrency taken from the
stages. Records travel pickled in a single binary column: they are nested and carry JPEGs and PCM
audio, never video bytes. Results stream back to the driver one batch at a time and are handed to a
callback; nothing is collected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
import sys
import warnings
from collections.abc import Callable, Iterable

from cosmo_data.pipeline.record import VideoRecord
from cosmo_data.pipeline.stage import Stage


class RayConnectionError(Exception):
    """The Ray cluster named by --ray-address cannot be reached."""


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


class _StageWorker:
    """Ray actor body: owns one instance of each stage of its group for its lifetime."""

    def __init__(self, stages: list[Stage], seed: int):
        self.stages = stages
        self.seed = seed
        for stage in stages:
            stage.setup()

    def __call__(self, batch: dict) -> dict:
        records = [pickle.loads(blob) for blob in batch["record"]]
        for stage in self.stages:
            # The Ray batch is sized for the group's largest batch; each stage sees its own size.
            done: list[VideoRecord] = []
            for start in range(0, len(records), stage.batch_size):
                chunk = records[start:start + stage.batch_size]
                seed_for_batch(self.seed, chunk)
                done.extend(stage.process(chunk))
            records = done
        return {"record": [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]}


def start_ray(address: str | None, groups: list[list[Stage]], videos: int) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray's C++ core logs harmless warnings to the console; the build shows its own progress instead.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except Exception as exc:  # ray raises ConnectionError, ValueError or RuntimeError here
            raise RayConnectionError(f"cannot reach Ray at {address}: {exc}") from exc
        return
    # Embedded Ray: logical CPUs are scheduling tokens; give every declared actor pool a slot so a
    # small machine runs the whole pipeline (oversubscribed) instead of waiting for CPUs forever.
    wanted = sum(group[0].resources.cpus * pool_size(group, videos) for group in groups) + 1
    # Embedded Ray stays on loopback.
    ray.init(num_cpus=max(os.cpu_count() or 1, int(wanted + 0.999)), _node_ip_address="127.0.0.1", **quiet)


def pool_size(group: list[Stage], videos: int) -> int:
    """Actors for a group: its declared concurrency, but never more than there are videos to share."""
    return max(1, min(group[0].resources.concurrency, videos))


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
    *,
    address: str | None,
    seed: int = 0,
    on_record: Callable[[VideoRecord], None],
) -> None:
    """Run records through the stages on Ray, calling on_record for each finished record as it arrives."""
    import ray
    import ray.data

    items = [{"record": pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL)} for r in records]
    if not items:
        return
    groups = worker_groups(stages)
    start_ray(address, groups, len(items))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Ray Data's advice about pool sizes and its own deprecations are noise in the build's console.
    warnings.filterwarnings("ignore", module=r"ray\.data")
    gpus_available = ray.cluster_resources().get("GPU", 0) > 0

    # One video per block: videos are heavy and independent, so they spread over the pool at once.
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    for group in groups:
        resources = group[0].resources
        dataset = dataset.map_batches(
            _StageWorker,
            fn_constructor_args=(group, seed),
            batch_size=max(stage.batch_size for stage in group),
            compute=ray.data.ActorPoolStrategy(size=pool_size(group, len(items))),
            num_cpus=resources.cpus,
            # CPU fallback: a stage that asks for a GPU runs on CPU where the cluster has none.
            num_gpus=resources.gpus if gpus_available else 0,
            batch_format="numpy",
            zero_copy_batch=True,
        )
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        for blob in batch["record"]:
            on_record(pickle.loads(blob))
