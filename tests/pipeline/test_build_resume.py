"""Resuming a build: what the fingerprint covers, and --retry-failed reopening the groups whose videos
failed for a reason that passes (a full disk, YouTube's rate limit, a deadline)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from cosmo_data.pipeline.build import BuildError, build, build_fingerprint
from cosmo_data.pipeline.progress import Progress
from cosmo_data.pipeline.sources import read_sources
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import (
    DISK_FULL,
    DOWNLOAD_FAILED,
    RATE_LIMITED,
    RETRYABLE,
    Clip,
    Document,
    Frame,
    Segment,
    Sentence,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.base import Resources, process_each
from cosmo_data.stages.shard_samples import ShardSamplesStage

TABLES = ("videos", "clips", "frames", "transcripts", "documents")
FORMATS = ["native", "mmc4"]


def test_fingerprint_covers_what_decides_the_output_only(tmp_path):
    source = tmp_path / "ids.txt"
    source.write_text("aaaaaaaaaa0\naaaaaaaaaa1\n")
    rows = read_sources([source])
    base = BuildConfig()

    def fingerprint(**sections) -> str:
        data = base.model_dump(mode="json")
        for dotted, value in sections.items():
            section, key = dotted.split("__")
            data[section][key] = value
        return build_fingerprint(rows, BuildConfig.model_validate(data))

    same = fingerprint()
    # Where and how wide it runs: never the output.
    assert fingerprint(video__tmp_dir="/mnt/other-disk") == same
    assert fingerprint(video__min_free_disk_gb=50.0) == same
    assert fingerprint(assign__document_resources={"cpus": 4, "batch_size": 64}) == same
    assert fingerprint(output__resources={"cpus": 3, "concurrency": 2}) == same
    assert fingerprint(caption__images_per_forward=4, clip_score__images_per_forward=4) == same
    assert fingerprint(clip_score__sentences_per_forward=4) == same
    assert build_fingerprint(rows, base.model_copy(update={"ray_address": "auto"})) == same
    # What the output is made of, and deadlines (they decide which videos fail).
    assert fingerprint(video__deadline_s=60.0) != same
    assert fingerprint(download__deadline_s=60.0) != same
    assert fingerprint(asr__model="tiny") != same
    assert fingerprint(output__videos_per_shard=3) != same
    assert build_fingerprint(rows[:1], base) != same


# --- --retry-failed through a real build: real Ray, real writer, real shard samples ---------------------


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


class FlakyVideoStage:
    """Stands in for the video and model stages: makes each video a small finished document, except that
    the videos in `flaky` fail the first time they are seen (a marker file remembers) and those in
    `broken` always fail."""

    name = "video"
    resources = Resources(cpus=1)
    batch_size = 1

    def __init__(self, seen_dir: Path, flaky: dict[str, tuple[str, str]], broken: dict[str, tuple[str, str]]):
        self.seen_dir, self.flaky, self.broken = seen_dir, flaky, broken

    def setup(self) -> None:
        pass

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_each(batch, self._one, stage=self.name, failure_status=DOWNLOAD_FAILED)

    def _one(self, record: VideoRecord) -> None:
        seen = self.seen_dir / record.video_id
        first_time = not seen.exists()
        seen.touch()
        if record.video_id in self.broken:
            raise VideoFailure(*self.broken[record.video_id])
        if record.video_id in self.flaky and first_time:
            raise VideoFailure(*self.flaky[record.video_id])
        shade = 20 * record.source_index
        record.duration_s, record.width, record.height, record.language = 4.0, 32, 24, "en"
        record.clips = [Clip(0, 0.0, 2.0, "start"), Clip(1, 2.0, 4.0, "cut")]
        for clip in record.clips:
            clip.brightness = shade + 10.0  # a signal `cosmo-data filter` can judge: 10, 30, 50, ...
        record.frames = [
            Frame(0, 0, 1.0, 32, 24, _jpeg((shade, 0, 0)), "a red square"),
            Frame(1, 1, 3.0, 32, 24, _jpeg((0, 0, shade)), "a blue square"),
        ]
        record.transcript = [Segment(0, 0.0, 4.0, f"Hello {record.video_id}.", -0.3, 0.01)]
        sentences = [
            Sentence("a red square", 0.0, 2.0, "caption"),
            Sentence(f"Hello {record.video_id}.", 0.0, 4.0, "asr"),
        ]
        record.document = Document(record.video_id, sentences, [0, 1], [[0.3, 0.1], [0.0, 0.4]], [0, 1], [0.3, 0.4])


IDS = [f"video{k:06d}" for k in range(7)]  # 11 characters: YouTube ids, never downloaded here
FLAKY = {
    IDS[2]: (DISK_FULL, "only 0.20 GB free in /tmp (needs 1)"),
    # What stages/download.py records for YouTube's 429 once its retries are spent.
    IDS[5]: (
        RATE_LIMITED,
        "Unable to download webpage: HTTP Error 429: Too Many Requests (gave up after 3 attempts)",
    ),
}
BROKEN = {IDS[6]: (DOWNLOAD_FAILED, "Unable to download webpage: HTTP Error 404: Not Found")}


def _run(source: Path, out: Path, seen: Path, *, run_build=build, **options):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    config = BuildConfig.model_validate(
        {"output": {"videos_per_shard": 2, "formats": FORMATS, "resources": {"cpus": 1}}}
    )
    seen.mkdir(exist_ok=True)
    return run_build(
        [source],
        out,
        config,
        stages_factory=lambda c: [FlakyVideoStage(seen, FLAKY, BROKEN), ShardSamplesStage(c)],
        **options,
    )


def _tables(out: Path) -> dict[str, list[dict]]:
    contents = {}
    for table in TABLES:
        rows = pq.read_table(sorted((out / table).glob("*.parquet"))).to_pylist()
        for row in rows:
            row.pop("timings", None)
            row.pop("node_id", None)  # a new Ray node per embedded Ray
        contents[table] = rows
    return contents


def _statuses(out: Path) -> dict[str, str]:
    return {row["video_id"]: row["status"] for row in _tables(out)["videos"]}


@pytest.mark.slow
def test_retry_failed_rebuilds_only_the_groups_with_retryable_failures(tmp_path):
    source = tmp_path / "ids.txt"
    source.write_text("\n".join(IDS) + "\n")
    out, seen = tmp_path / "out", tmp_path / "seen"

    first = _run(source, out, seen)
    assert _statuses(out) == {
        **{i: "ok" for i in IDS},
        IDS[2]: DISK_FULL,
        IDS[5]: RATE_LIMITED,
        IDS[6]: DOWNLOAD_FAILED,
    }
    assert first.retryable == {DISK_FULL: 1, RATE_LIMITED: 1}
    summary = json.loads((out / "build.json").read_text())
    assert summary["retryable"] == {DISK_FULL: 1, RATE_LIMITED: 1}

    # A plain rerun resumes: every group is done, nothing is retried.
    plain = _run(source, out, seen)
    assert (plain.groups_written, plain.groups_resumed) == (0, 4)
    assert _statuses(out)[IDS[2]] == DISK_FULL

    untouched = {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("00000[03].tar")}
    with pytest.raises(BuildError, match="not a failure status"):
        _run(source, out, seen, retry_failed={"no_such_status"})
    retried = _run(source, out, seen, retry_failed=set())  # none named: every retryable status
    assert (retried.groups_written, retried.groups_resumed) == (2, 2)  # groups 1 and 2, every source in them
    assert _statuses(out) == {**{i: "ok" for i in IDS}, IDS[6]: DOWNLOAD_FAILED}
    assert retried.retryable == {} and retried.failures == {DOWNLOAD_FAILED: 1}
    assert untouched == {p: p.stat().st_mtime_ns for p in untouched}  # groups without such rows stay as they were

    # Exactly what a build that never met those failures writes.
    clean_out, clean_seen = tmp_path / "clean", tmp_path / "clean-seen"
    clean_seen.mkdir()
    for video_id in FLAKY:
        (clean_seen / video_id).touch()
    _run(source, clean_out, clean_seen)
    tables = _tables(out)
    assert tables == _tables(clean_out)
    assert sorted(r["video_id"] for r in tables["videos"]) == sorted(IDS)
    ok_docs = sorted(r["doc_id"] for r in tables["documents"])
    assert ok_docs == sorted(set(IDS) - set(BROKEN))
    for fmt in FORMATS:
        shards = sorted((out / "shards" / fmt).glob("*.tar"))
        keys = [s["__key__"] for s in wds.WebDataset([str(p) for p in shards], shardshuffle=False)]
        assert sorted(keys) == ok_docs, fmt
        sizes = json.loads((out / "shards" / fmt / "sizes.json").read_text())
        assert sizes == {"000000.tar": 2, "000001.tar": 2, "000002.tar": 2, "000003.tar": 0}
        for shard in shards:
            assert shard.read_bytes() == (clean_out / "shards" / fmt / shard.name).read_bytes()
        for name in ("sizes.json", "num_samples.json"):
            assert (out / "shards" / fmt / name).read_text() == (clean_out / "shards" / fmt / name).read_text()
    assert not list(out.rglob(".tmp-*"))


@pytest.mark.slow
def test_a_retry_after_filter_and_dedup_applies_them_again_to_the_groups_it_writes(tmp_path):
    from cosmo_data.cli import _build_corpus
    from cosmo_data.corpus.dedup import dedup_corpus
    from cosmo_data.corpus.filter import filter_corpus
    from cosmo_data.corpus.validate import validate
    from cosmo_data.schemas.config import CurationConfig
    from cosmo_data.storage import corpus_state

    source = tmp_path / "ids.txt"
    source.write_text("\n".join(IDS) + "\n")
    out, seen = tmp_path / "out", tmp_path / "seen"
    _run(source, out, seen, run_build=_build_corpus)  # IDS[2] (group 1) and IDS[5] (group 2) fail, retryable
    # Clips of IDS[k] are 20k + 10 bright: the rule takes IDS[0], IDS[1] and IDS[3] (IDS[2] failed).
    filter_corpus(out, CurationConfig.model_validate({"clip": {"min_brightness": 75}}))
    dedup_corpus(out)  # finds nothing here (no embeddings), and is recorded all the same
    assert _statuses(out) == {
        **dict.fromkeys(IDS[:2] + IDS[3:4], "filtered"),
        IDS[2]: DISK_FULL,
        IDS[4]: "ok",
        IDS[5]: RATE_LIMITED,
        IDS[6]: DOWNLOAD_FAILED,
    }
    # A stricter filter (IDS[4], 90) killed before its first move: its staged group 2 is older than the
    # group the retry writes, so it has to be switched in before the retry, not over the retry's files.
    real_move = corpus_state._move
    corpus_state._move = lambda source, target: (_ for _ in ()).throw(KeyboardInterrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            filter_corpus(out, CurationConfig.model_validate({"clip": {"min_brightness": 95}}))
    finally:
        corpus_state._move = real_move

    retried = _run(source, out, seen, run_build=_build_corpus, retry_failed=set())

    assert retried.groups_written == 2  # groups 1 and 2, rebuilt whole under the build's own rules
    # IDS[3] and IDS[4] came back ok in their rebuilt groups and IDS[2] was built for the first time: the
    # filters hold all three, and IDS[5]'s retry is not covered by the killed filter's older files.
    statuses = {**dict.fromkeys(IDS[:5], "filtered"), IDS[5]: "ok", IDS[6]: DOWNLOAD_FAILED}
    assert _statuses(out) == statuses
    assert retried.ok == 1 and retried.failures == {"filtered": 5, DOWNLOAD_FAILED: 1}
    assert retried.curation_reapplied == [
        "filter (its rules applied again): 2 videos filtered now",
        "dedup (cosine >= 0.95 again): 0 videos and 0 clips marked now",
        "filter (its rules applied again): 1 videos filtered now",
    ]
    for fmt in FORMATS:
        shards = sorted(str(p) for p in (out / "shards" / fmt).glob("*.tar"))
        assert [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)] == [IDS[5]]
    assert validate(out).problems == []


def test_retryable_statuses_are_failure_kinds():
    assert {DISK_FULL, RATE_LIMITED, "deadline_exceeded"} <= RETRYABLE
    assert DOWNLOAD_FAILED not in RETRYABLE and "ok" not in RETRYABLE


# --- shard bytes stay off the driver; a kill between staged parts and markers --------------------------

# A build killed (kill -9: driver, its Ray and the workers) when the `kill_at`-th record reaches the driver:
# that record's samples are staged, its group is not written. argv: source, out, seen folder, kill_at.
KILLED_DRIVER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_build_resume as t
from cosmo_data.pipeline.progress import Progress

source, out, seen, kill_at = sys.argv[1:5]


class KillAt(Progress):
    def record_done(self, record):
        super().record_done(record)
        if self.done == int(kill_at):
            os.killpg(0, signal.SIGKILL)


t._run(Path(source), Path(out), Path(seen), progress=KillAt(6))
"""


def _bytes_in(value: object) -> list[bytes]:
    """Every bytes value anywhere in a record (dataclasses, lists, dicts)."""
    if isinstance(value, bytes):
        return [value]
    if hasattr(value, "__dataclass_fields__"):
        return [b for name in value.__dataclass_fields__ for b in _bytes_in(getattr(value, name))]
    if isinstance(value, dict):
        return [b for item in value.values() for b in _bytes_in(item)]
    if isinstance(value, (list, tuple)):
        return [b for item in value for b in _bytes_in(item)]
    return []


class ShardBytesWatch(Progress):
    """What reaches the driver's on_record: the staged part of every ok record, and no byte of it."""

    def __init__(self, total: int):
        super().__init__(total)
        self.parts: list[int] = []

    def record_done(self, record: VideoRecord) -> None:
        super().record_done(record)
        if record.ok:
            staged = Path(record.shard_part.path).read_bytes()  # there until its group is marked
            self.parts.append(len(staged))
            assert all(frame.jpeg == b"" for frame in record.frames) and record.cosmo_video is None
            assert not [b for b in _bytes_in(record) if b and b in staged], "shard bytes reached the driver"


@pytest.mark.slow
def test_a_kill_between_staged_parts_and_markers_resumes_with_nothing_twice_and_no_shard_byte_on_the_driver(
    tmp_path,
):
    ids = [f"killed{k:05d}" for k in range(6)]  # 11 characters: YouTube ids, never downloaded here
    source = tmp_path / "ids.txt"
    source.write_text("\n".join(ids) + "\n")
    out, seen = tmp_path / "out", tmp_path / "seen"
    seen.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(KILLED_DRIVER.format(tests=str(Path(__file__).parent)))
    killed = subprocess.run(
        [sys.executable, str(driver), str(source), str(out), str(seen), "4"],
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    marked = {p.stem for p in (out / "_state/groups").glob("*.json") if p.stem.isdigit()}  # not .tmp- names
    staged = list((out / "_state/parts").rglob("*.part"))
    # Killed with samples staged for groups that have no marker (the 4th record's group among them).
    assert len(marked) < 3 and staged and not {p.parent.name for p in staged} & marked

    watch = ShardBytesWatch(len(ids))
    resumed = _run(source, out, seen, progress=watch)
    assert (resumed.ok, resumed.groups_written + resumed.groups_resumed) == (6, 3)
    assert resumed.groups_resumed == len(marked) and len(watch.parts) == 2 * resumed.groups_written
    for fmt in FORMATS:
        shards = sorted(str(p) for p in (out / "shards" / fmt).glob("*.tar"))
        keys = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]
        assert sorted(keys) == ids, fmt  # every sample once
        assert json.loads((out / "shards" / fmt / "sizes.json").read_text()) == {f"{g:06d}.tar": 2 for g in range(3)}
    assert sorted(r["video_id"] for r in _tables(out)["videos"]) == ids
    assert not list((out / "_state/parts").rglob("*")) and not list(out.rglob(".tmp-*"))
