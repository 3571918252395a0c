import os
import random
import sys

import pytest
from cosmo_data.pipeline.ray_runner import (
    RayConnectionError,
    check_ray_address,
    pool_size,
    run_stages,
    seed_for_batch,
    worker_groups,
)
from cosmo_data.pipeline.record import VideoRecord
from cosmo_data.pipeline.stage import Resources


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


def test_stages_with_equal_resources_share_one_worker_and_keep_their_batch_sizes():
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    shared = Resources(cpus=0.5)
    stages = [NotingStage("video", 1, Resources(cpus=0.5, concurrency=2)), NotingStage("asr", 2, shared),
              NotingStage("caption", 4, shared)]
    assert [[s.name for s in group] for group in worker_groups(stages)] == [["video"], ["asr", "caption"]]
    done: list[VideoRecord] = []
    started_here = not ray.is_initialized()  # a Ray started for these stages is too small for later builds
    try:
        run_stages([VideoRecord(f"v{n}", f"v{n}", n) for n in range(8)], stages, address=None,
                   on_record=done.append)
    finally:
        if started_here:
            ray.shutdown()
    assert sorted(r.video_id for r in done) == [f"v{n}" for n in range(8)]
    assert len({r.counters["asr_pid"] for r in done}) == 1
    assert {r.counters["asr_pid"] for r in done} == {r.counters["caption_pid"] for r in done}
    assert {r.counters["video_pid"] for r in done}.isdisjoint({r.counters["asr_pid"] for r in done})
    assert max(r.counters["asr_videos"] for r in done) <= 2 < max(r.counters["caption_videos"] for r in done) <= 4


def test_no_more_workers_than_videos():
    stage = NotingStage("video", 1, Resources(concurrency=8))
    assert [pool_size([stage], videos) for videos in (1, 3, 100)] == [1, 3, 8]
