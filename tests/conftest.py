"""Shared fixtures: generated media with ground truth, the tiny offline config, a built demo corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline.demo_media import make_demo_videos
from cosmo_data.schemas.config import BuildConfig, load_config


@pytest.fixture(scope="session")
def demo_videos(tmp_path_factory) -> list[Path]:
    return make_demo_videos(tmp_path_factory.mktemp("demo_videos"))


def tiny_config(**overrides) -> BuildConfig:
    """tiny.yaml, less its real LLM narrator (seconds of CPU per clip) unless a test turns it on: the
    narration tests build with it once (tests/stages/test_narrate.py)."""
    return load_config(TINY_CONFIG, {"narration.enabled": False, **overrides})


@pytest.fixture(scope="session")
def demo_sources(demo_videos, tmp_path_factory) -> Path:
    """The demo videos plus a duplicate and a malformed line, one group per source."""
    path = tmp_path_factory.mktemp("sources") / "sources.txt"
    lines = [str(v) for v in demo_videos] + [str(demo_videos[0]), "not a video"]
    path.write_text("# demo corpus\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def demo_corpus(demo_sources, tmp_path_factory) -> Path:
    """A real build (embedded Ray, tiny models) of demo_sources; shared by the build and corpus tests."""
    from cosmo_data.pipeline.build import build

    out = tmp_path_factory.mktemp("corpus") / "out"
    build([demo_sources], out, tiny_config(**{"output.videos_per_shard": 1}))
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server on loopback (moto_server), checking credentials; stopped at the end of the session."""
    from s3server import moto_s3

    with moto_s3() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """s3_server, with the standard AWS variables pointing this process (and its children) at it."""
    from cosmo_data.storage import filesystem

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    filesystem.cache_clear()
    yield s3_server
    filesystem.cache_clear()
