import random

import pytest
from cosmo_data.pipeline.ray_runner import (
    RayConnectionError,
    check_ray_address,
    seed_for_batch,
)
from cosmo_data.pipeline.record import VideoRecord


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
