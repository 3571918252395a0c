"""End-to-end builds on real videos with real Ray, real ffmpeg and tiny real-architecture models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline.generated_media import GroundTruth

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("cosmo-data"))
FORMATS = ("native", "mmc4", "cosmo")


def sql(out: Path, query: str) -> list[tuple]:
    con = duckdb.connect()
    for table in ("videos", "clips", "frames", "transcripts", "documents"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{out}/{table}/*.parquet')")
    return con.execute(query).fetchall()


def test_every_source_once_with_status(demo_corpus, demo_videos):
    rows = sql(demo_corpus, "SELECT source, status, error FROM videos ORDER BY source_index")
    assert len(rows) == len(demo_videos) + 1  # the duplicate is skipped, the malformed line kept
    assert [r[1] for r in rows] == ["ok"] * len(demo_videos) + ["invalid_source"]
    assert "not a YouTube id" in rows[-1][2]


def test_clips_cover_each_video_and_match_ground_truth(demo_corpus, demo_videos):
    for video in demo_videos:
        truth = GroundTruth.load(video)
        clips = sql(
            demo_corpus,
            f"SELECT c.start_s, c.end_s FROM clips c JOIN videos v USING (video_id) "
            f"WHERE v.source = '{video}' ORDER BY clip_idx",
        )
        assert clips[0][0] == pytest.approx(0.0, abs=0.05)
        assert clips[-1][1] == pytest.approx(truth.duration_s, abs=0.2)
        assert all(a[1] == pytest.approx(b[0]) for a, b in zip(clips, clips[1:]))
        assert len(clips) == len(truth.boundaries) + 1


def test_documents_in_every_format_and_readable_by_webdataset(demo_corpus, demo_videos):
    doc_ids = {r[0] for r in sql(demo_corpus, "SELECT doc_id FROM documents")}
    assert len(doc_ids) == len(demo_videos)
    for fmt in FORMATS:
        sizes = json.loads((demo_corpus / "shards" / fmt / "sizes.json").read_text())
        shards = sorted(str(p) for p in (demo_corpus / "shards" / fmt).glob("*.tar"))
        keys = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]
        assert sorted(keys) == sorted(doc_ids), fmt
        assert sum(sizes.values()) == len(doc_ids)
    frames = sql(demo_corpus, "SELECT count(*), count(caption) FROM frames")[0]
    assert frames[0] > 0 and frames[0] == frames[1]  # every keyframe got a caption


def test_build_summary_file(demo_corpus):
    summary = json.loads((demo_corpus / "build.json").read_text())
    assert summary["ok"] == 3 and summary["failures"] == {"invalid_source": 1}


def _table_contents(out: Path) -> dict[str, list]:
    contents = {}
    for table in ("videos", "clips", "frames", "transcripts", "documents"):
        data = pq.read_table(sorted((out / table).glob("*.parquet"))).to_pylist()
        for row in data:
            row.pop("timings", None)  # wall-clock seconds legitimately differ between runs
            row.pop("node_id", None)  # so does the Ray node (a new one per embedded Ray)
        contents[table] = data
    return contents


def _done_markers(folder: Path) -> list[Path]:
    # pathlib's glob matches dot files too: a marker caught under its temporary name is not done yet.
    return [p for p in folder.glob("*.json") if not p.name.startswith(".")]


def test_sigkill_mid_build_then_resume_equals_clean_run(demo_corpus, demo_sources, tmp_path):
    out = tmp_path / "killed"
    command = [
        CLI,
        "build",
        "--source",
        str(demo_sources),
        "--out",
        str(out),
        "--config",
        str(TINY_CONFIG),
        "--set=narration.enabled=false",  # as conftest's tiny_config, which built demo_corpus
        "--set",
        "output.videos_per_shard=1",
        # One video per model call, so that groups are written apart, with time to kill in between.
        *(f"--set={stage}.resources.batch_size=1" for stage in ("asr", "caption", "clip_score", "assign", "output")),
        "--set=assign.document_resources.batch_size=1",
    ]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = out / "_state" / "groups"
    deadline = time.monotonic() + 600
    # The malformed source's group is written before Ray starts; kill the whole process tree
    # (driver, Ray and its workers) once the first video group is written too.
    while time.monotonic() < deadline and process.poll() is None and len(_done_markers(markers)) < 2:
        time.sleep(0.05)
    assert process.poll() is None, "the build finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(_done_markers(markers))
    # Groups' tars are made by Ray tasks and their markers written as the tasks end, several at once: the
    # kill can land after the last marker, still before the build's end (build.json, the card).
    assert 2 <= done_before <= 4

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done_before} resumed" in rerun.stdout

    assert _table_contents(out) == _table_contents(demo_corpus)
    for fmt in FORMATS:
        for shard in (demo_corpus / "shards" / fmt).glob("*.tar"):
            assert (out / "shards" / fmt / shard.name).read_bytes() == shard.read_bytes(), (fmt, shard.name)
        assert (out / "shards" / fmt / "sizes.json").read_text() == (
            demo_corpus / "shards" / fmt / "sizes.json"
        ).read_text()
    assert not list(out.rglob(".tmp-*")) and not list((out / "_state" / "parts").rglob("*"))


def test_rerun_of_a_finished_build_writes_nothing(demo_corpus, demo_sources):
    before = {p: p.stat().st_mtime_ns for p in demo_corpus.rglob("*.tar")}
    result = subprocess.run(
        [
            CLI,
            "build",
            "--source",
            str(demo_sources),
            "--out",
            str(demo_corpus),
            "--config",
            str(TINY_CONFIG),
            "--set=narration.enabled=false",  # as conftest's tiny_config, which built demo_corpus
            "--set",
            "output.videos_per_shard=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 groups written, 4 resumed" in result.stdout
    assert before == {p: p.stat().st_mtime_ns for p in demo_corpus.rglob("*.tar")}


def test_resume_with_other_settings_is_refused(demo_corpus, demo_sources):
    result = subprocess.run(
        [
            CLI,
            "build",
            "--source",
            str(demo_sources),
            "--out",
            str(demo_corpus),
            "--config",
            str(TINY_CONFIG),
            "--set=narration.enabled=false",  # as conftest's tiny_config, which built demo_corpus
            "--set",
            "output.videos_per_shard=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert "holds a build of other sources or settings" in result.stderr


def test_the_driver_builds_the_stages_without_torch():
    """Only the workers load models: constructing the stages in the driver (before Ray starts) must
    not pay for importing torch, whisper or open_clip."""
    probe = (
        "import sys\n"
        "from cosmo_data.cli import TINY_CONFIG\n"
        "from cosmo_data.pipeline.build import make_stages\n"
        "from cosmo_data.schemas.config import load_config\n"
        "stages = make_stages(load_config(TINY_CONFIG))\n"
        "print(len(stages), sorted(m for m in ('torch', 'whisper', 'open_clip') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["11", "[]"]  # 8 stages (tiny.yaml narrates) and 3 curation stages
