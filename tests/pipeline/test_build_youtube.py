"""Builds as on real YouTube, against loopback stand-ins (tests/youtube_servers.py): two small real Ray
builds, each checked for several things at once.

1. A site that wants a cookie, answers 429 for a while, and has caption tracks, reached through a proxy
   with a password: every request reached the origin via the proxy with the cookie, no video failed,
   the identity slept, transcripts are the page's caption track with whisper never called (counted in
   the ASR workers), stats count the source, and neither the cookie's value nor the proxy's password is
   in any file of the corpus or in the build's output.
2. A HowTo100M-layout folder (videos named by YouTube id, raw_caption.json beside them) built with ASR
   off: its transcripts are the released captions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_config
from youtube_servers import CAPTION_LINES, CountingProxy, VideoSite, cookies_file, serving

from cosmo_data.corpus.stats import compute_stats
from cosmo_data.pipeline.build import build, make_stages
from cosmo_data.pipeline.generated_media import CUT, make_sample_video
from cosmo_data.stages import asr as asr_module
from cosmo_data.stages.asr import AsrStage

pytestmark = pytest.mark.slow

COOKIE = ("SID", "cookie-secret-b81d0e")
PROXY_PASSWORD = "proxy-pass-c44f2a"


class CountingAsr(AsrStage):
    """The ASR stage, writing a file for every whisper call its worker makes."""

    def __init__(self, config, calls_dir: Path):
        super().__init__(config)
        self.calls_dir = calls_dir

    def setup(self) -> None:
        super().setup()
        calls_dir = self.calls_dir

        def counted(function):
            def call(model, audios, *args, **kwargs):
                (calls_dir / f"call-{len(list(calls_dir.iterdir()))}").write_text(str(len(audios)))
                return function(model, audios, *args, **kwargs)

            return call

        asr_module.transcribe_batched = counted(asr_module.transcribe_batched)
        asr_module.transcribe_sequential = counted(asr_module.transcribe_sequential)


def _table(out: Path, name: str) -> list[dict]:
    return pq.read_table(sorted((out / name).glob("*.parquet"))).to_pylist()


def _short_videos(directory: Path, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        make_sample_video(directory / name, segments=[1.5, 1.5], transitions=[CUT], size=(160, 120), fps=10, seed=seed)


def test_build_through_a_proxy_with_cookies_captions_and_a_rate_limit(tmp_path, capfd):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    _short_videos(tmp_path / "media", ["a.mp4", "b.mp4"])
    calls = tmp_path / "whisper-calls"
    calls.mkdir()
    with serving(VideoSite(tmp_path / "media")) as site, serving(CountingProxy("builder", PROXY_PASSWORD)) as proxy:
        site.cookie = COOKIE
        site.block_watch = 2
        sources = tmp_path / "sources.txt"
        sources.write_text(f"{site.url('watch/a.mp4')}\n{site.url('watch/b.mp4')}\n")
        config = tiny_config(
            **{
                "output.videos_per_shard": 2,
                "download.retries": 0,
                "download.cookies_file": str(cookies_file(tmp_path / "cookies.txt", *COOKIE)),
                "download.proxies": [proxy.url],
                "download.identity_sleep_s": 0.2,
                "download.identity_give_up_s": 60,
            }
        )
        stages = [CountingAsr(config, calls) if isinstance(s, AsrStage) else s for s in make_stages(config)]
        out = tmp_path / "out"

        result = build([sources], out, config, stages_factory=lambda c: stages)

    videos = _table(out, "videos")
    assert result.failures == {} and [v["status"] for v in videos] == ["ok", "ok"]
    # The site answered 429 to the first two page requests: the proxy's identity slept, nothing failed.
    assert sum(dict(v["counters"]).get("identity_strikes", 0) for v in videos) == 2
    assert all(v.via_proxy and f"{COOKIE[0]}={COOKIE[1]}" in v.cookie for v in site.visits)
    assert len(proxy.forwarded) == len(site.visits) and proxy.refused == 0
    assert {v.path for v in site.visits} >= {"/media/a.mp4", "/media/b.mp4", "/captions/a.vtt", "/captions/b.vtt"}
    # The page's caption track is the transcript; whisper never ran.
    transcripts = _table(out, "transcripts")
    assert {t["text_source"] for t in transcripts} == {"platform_manual"}
    assert [t["text"] for t in transcripts if t["video_id"] == videos[0]["video_id"]] == CAPTION_LINES
    assert list(calls.iterdir()) == []
    assert compute_stats(out)["text_sources"] == {"platform_manual": 2}
    assert all(v["title"].startswith("Building a birdhouse") and v["ytdlp_version"] for v in videos)
    assert json.loads((out / "build.json").read_text())["ytdlp_version"] == videos[0]["ytdlp_version"]
    # No secret anywhere: corpus files (tables, shards, run state, build.json) and the build's output.
    logs = capfd.readouterr()
    for secret in (COOKIE[1], PROXY_PASSWORD):
        assert secret not in logs.out + logs.err
        for path in out.rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def test_howto100m_layout_builds_its_released_captions_with_asr_off(tmp_path):
    folder = tmp_path / "howto100m"
    _short_videos(folder, ["Aa1Bb2Cc3Dd.mp4"])
    captions = {"Aa1Bb2Cc3Dd": {"start": [0.0, 1.2], "end": [1.2, 2.9], "text": ["cut the wood", "sand it down"]}}
    (folder / "raw_caption.json").write_text(json.dumps(captions))
    out = tmp_path / "out"

    result = build([folder], out, tiny_config(**{"asr.enabled": False}))

    assert result.failures == {}
    transcripts = _table(out, "transcripts")
    assert [(t["start_s"], t["end_s"], t["text"], t["text_source"]) for t in transcripts] == [
        (0.0, 1.2, "cut the wood", "source"),
        (1.2, 2.9, "sand it down", "source"),
    ]
    assert compute_stats(out)["text_sources"] == {"source": 1}
