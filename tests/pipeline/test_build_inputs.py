"""One build over every kind of broken, unusual and hostile input: it finishes, each distinct source has
one row, unusual-but-valid videos are ok, broken ones carry the real error text, nothing is executed."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import duckdb
import odd_media
import pytest
from conftest import tiny_config
from loopback import refused_url, serve_directory

from cosmo_data.pipeline import generated_media as samples
from cosmo_data.pipeline.build import build

pytestmark = pytest.mark.slow


def make_inputs(media: Path) -> dict[str, Path]:
    """name -> file; the names say what each is."""
    short = dict(segments=[1.5, 1.5], transitions=[samples.CUT], size=(160, 120), fps=10)
    files: dict[str, Path] = {}
    files["good"] = media / "good.mp4"
    samples.make_sample_video(files["good"], speech=["Hello there."], **short)
    files["empty"] = media / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["random"] = media / "random.mp4"
    # Seeded: unseeded bytes now and then probe as a text subtitle file (no_video_stream, not a decode failure).
    files["random"].write_bytes(random.Random(0).randbytes(50_000))
    files["html"] = media / "page.mp4"
    files["html"].write_text("<!DOCTYPE html><html><body>not a video</body></html>")
    files["truncated"] = odd_media.truncate_copy(files["good"], media / "truncated.mp4", 0.02)
    files["audio_only"] = odd_media.make_audio_only(media / "audio_only.m4a")
    files["no_audio"] = media / "no_audio.mp4"
    samples.make_sample_video(files["no_audio"], audio=False, **short)
    files["single_frame"] = odd_media.make_single_frame_video(media / "single_frame.mp4")
    files["tiny"] = media / "tiny16.mp4"
    samples.make_sample_video(files["tiny"], **{**short, "size": (16, 16)})
    files["4k"] = media / "uhd.mp4"
    samples.make_sample_video(files["4k"], segments=[1.0, 1.0], transitions=[samples.CUT], size=(3840, 2160), fps=5)
    files["rotated"] = odd_media.make_rotated_copy(files["good"], media / "rotated.mp4", 90)
    files["vfr"] = odd_media.make_vfr_video(media / "vfr.mp4")
    files["non_ascii_spaces"] = media / "vidéo de cuisine ünï.mp4"
    shutil.copy(files["good"], files["non_ascii_spaces"])
    files["mkv"] = media / "clip.mkv"
    samples.make_sample_video(files["mkv"], **short)
    files["webm"] = media / "clip.webm"
    samples.make_sample_video(files["webm"], **short)
    return files


def test_broken_unusual_and_hostile_inputs_in_one_build(tmp_path, monkeypatch):
    media = tmp_path / "media"
    media.mkdir()
    files = make_inputs(media)
    out = tmp_path / "out"
    pwned = tmp_path / "pwned"
    hostile = [
        f"$(touch {pwned}-1)",
        f"`touch {pwned}-2`",
        f"x; touch {pwned}-3",
        f"--exec 'touch {pwned}-4'",
        f"-o {pwned}-5",
        "../../../../etc/passwd.mp4",
    ]
    monkeypatch.chdir(tmp_path)  # a relative --exec/-o target would land here
    with serve_directory(media) as server:
        urls = {
            "http_good": server.url("/files/good.mp4"),
            "http_404": server.url("/files/missing.mp4"),
            "http_html": server.url("/page.mp4"),
            "http_trickle": server.url("/trickle.mp4"),
            "refused": refused_url(),
        }
        lines = [str(p) for p in files.values()] + list(urls.values()) + hostile + [str(files["good"])]
        source = tmp_path / "sources.txt"
        source.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe broken utf-8\n")
        config = tiny_config(**{"download.deadline_s": 8, "download.retries": 0, "output.videos_per_shard": 8})
        result = build([source], out, config)

    con = duckdb.connect()
    rows = {
        source: (status, error)
        for source, status, error in con.execute(
            f"SELECT source, status, error FROM read_parquet('{out}/videos/*.parquet')"
        ).fetchall()
    }
    distinct = len(set(lines)) + 1  # + the invalid UTF-8 line
    assert len(rows) == distinct == result.sources
    status = {name: rows[str(path)][0] for name, path in files.items()}
    status.update({name: rows[url][0] for name, url in urls.items()})
    error = {name: rows[str(path)][1] for name, path in files.items()}
    error.update({name: rows[url][1] for name, url in urls.items()})

    for name in (
        "good",
        "no_audio",
        "single_frame",
        "tiny",
        "4k",
        "rotated",
        "vfr",
        "non_ascii_spaces",
        "mkv",
        "webm",
        "http_good",
    ):
        assert status[name] == "ok", (name, error[name])
    for name in ("empty", "random", "html", "truncated"):
        assert status[name] == "decode_failed", (name, error[name])
        ffmpeg_words = ("Invalid data found", "moov atom not found", "partial file", "End of file")
        assert any(words in error[name] for words in ffmpeg_words), error[name]
    assert status["audio_only"] == "no_video_stream"
    assert status["http_404"] == "video_unavailable" and "404" in error["http_404"]
    assert status["refused"] == "download_failed" and "refused" in error["refused"].lower()
    assert status["http_html"] in ("download_failed", "decode_failed")
    assert status["http_trickle"] in ("deadline_exceeded", "download_failed")
    for line in hostile:
        assert rows[line][0] == "invalid_source"
    assert sum(1 for s, _ in rows.values() if s == "invalid_source") == len(hostile) + 1

    for _, err in rows.values():
        assert err is None or ("/tmp/" not in err.replace(str(tmp_path), "")), err  # no temp-file paths
    assert not list(tmp_path.glob("pwned*")) and not list(Path.cwd().glob("*touch*"))
    rotated = con.execute(
        f"SELECT width, height FROM read_parquet('{out}/videos/*.parquet') WHERE source = '{files['rotated']}'"
    ).fetchone()
    good = con.execute(
        f"SELECT width, height FROM read_parquet('{out}/videos/*.parquet') WHERE source = '{files['good']}'"
    ).fetchone()
    assert rotated == (good[1], good[0])
