import copy
import io
import json
from concurrent.futures import Future
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from cosmo_data.pipeline.writer import CorpusWriter, make_shards_here, write_shards
from cosmo_data.schemas import tables as schemas
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import (
    DOWNLOAD_FAILED,
    Clip,
    Document,
    Frame,
    Segment,
    Sentence,
    ShardPart,
    VideoRecord,
)
from cosmo_data.stages.shard_samples import ShardSamplesStage
from cosmo_data.storage import StorageError


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def finished_record(index: int, staging: str, formats: tuple[str, ...] = ("native",)) -> VideoRecord:
    """A finished video of source index `index`, through the build's last stage, its samples staged in
    `staging` (a writer's staging_for(group))."""
    record = VideoRecord(
        f"vid{index}",
        f"/v/{index}.mp4",
        index,
        duration_s=4.0,
        fps=25.0,
        width=32,
        height=24,
        has_audio=True,
        language="en",
        timings={"video": 0.5, "asr": 0.2},
    )
    record.clips = [Clip(0, 0.0, 2.0, "start"), Clip(1, 2.0, 4.0, "cut")]
    record.frames = [
        Frame(0, 0, 1.0, 32, 24, jpeg("red"), "a red square"),
        Frame(1, 1, 3.0, 32, 24, jpeg("blue"), "a blue square"),
    ]
    record.transcript = [Segment(0, 0.0, 4.0, "Hello there.", -0.3, 0.01)]
    sentences = [
        Sentence("a red square", 0.0, 2.0, "caption"),
        Sentence("Hello there.", 0.0, 4.0, "asr"),
        Sentence("a blue square", 2.0, 4.0, "caption"),
    ]
    record.document = Document(
        f"vid{index}", sentences, [0, 1], [[0.3, 0.1, 0.0], [0.0, 0.1, 0.4]], [0, 2], [0.3, 0.4], "mmc4", 7
    )
    record.staging = staging
    # The build's last stage: the samples the writer puts into tars.
    config = BuildConfig.model_validate({"output": {"formats": list(formats)}})
    return ShardSamplesStage(config).process([record])[0]


def test_group_is_written_with_schemas_and_reads_back(tmp_path):
    failed = VideoRecord("bad", "/v/bad.mp4", 2)
    failed.fail(DOWNLOAD_FAILED, "ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found")
    writer = CorpusWriter(tmp_path, ["native"])
    staging = writer.staging_for(0)
    summary = writer.write_group(0, [failed, finished_record(1, staging), finished_record(0, staging)])
    assert (summary.videos, summary.ok, summary.failures, summary.samples) == (
        3,
        2,
        {DOWNLOAD_FAILED: 1},
        {"native": 2},
    )

    for table, schema in schemas.TABLES.items():
        assert pq.read_schema(tmp_path / table / "part-000000.parquet").equals(schema, check_metadata=False)
    con = duckdb.connect()
    videos = con.execute(
        f"SELECT video_id, status, error FROM read_parquet('{tmp_path}/videos/*.parquet') ORDER BY source_index"
    ).fetchall()
    assert videos[0][:2] == ("vid0", "ok") and videos[2][1:] == (DOWNLOAD_FAILED, failed.error)
    assert con.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/clips/*.parquet')").fetchone() == (4,)
    matched = con.execute(
        f"SELECT list_transform(image_info, lambda x: x.matched_text_index) FROM read_parquet('{tmp_path}/documents/*.parquet') LIMIT 1"
    ).fetchone()[0]
    assert matched == [0, 2]

    samples = list(wds.WebDataset(str(tmp_path / "shards/native/000000.tar"), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == ["vid0", "vid1"]
    assert samples[0]["0.jpg"].size == (32, 24)
    assert samples[0]["json"]["text_list"][1] == "Hello there."
    assert json.loads((tmp_path / "shards/native/sizes.json").read_text()) == {"000000.tar": 2}


def test_rewriting_a_group_gives_identical_bytes(tmp_path):
    a, b = CorpusWriter(tmp_path / "a", ["native"]), CorpusWriter(tmp_path / "b", ["native"])
    a.write_group(3, [finished_record(0, a.staging_for(3))])
    b.write_group(3, [finished_record(0, b.staging_for(3))])
    for rel in ("shards/native/000003.tar", "documents/part-000003.parquet"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_recover_removes_unfinished_groups_and_temp_files(tmp_path):
    writer = CorpusWriter(tmp_path, ["native"])
    writer.write_group(0, [finished_record(0, writer.staging_for(0))])
    writer.write_group(1, [finished_record(1, writer.staging_for(1))])
    # A run killed after writing group 2's files but before its marker, mid-way through a temp file.
    writer.write_group(2, [finished_record(2, writer.staging_for(2))])
    (tmp_path / "_state/groups/000002.json").unlink()
    (tmp_path / "shards/native/.tmp-000003.tar").write_bytes(b"partial")

    writer.recover()
    assert writer.done_groups() == {0, 1}
    assert sorted(p.name for p in (tmp_path / "shards/native").iterdir()) == [
        "000000.tar",
        "000001.tar",
        "num_samples.json",
        "sizes.json",
    ]
    assert not (tmp_path / "videos/part-000002.parquet").exists()
    assert json.loads((tmp_path / "shards/native/sizes.json").read_text()) == {"000000.tar": 1, "000001.tar": 1}


def test_writing_a_group_reads_no_marker_and_resumed_manifests_equal_a_fresh_build(tmp_path, monkeypatch):
    """The manifests are kept from counts in memory: a group written reads none of the done markers (at
    4,700 groups re-reading them all cost ~100 ms per group), and a resumed build writes the same bytes."""
    from cosmo_data.schemas.corpus_layout import SIZES_FILES

    first = CorpusWriter(tmp_path / "resumed", ["native", "mmc4"])
    for group in range(6):
        first.write_group(group, [finished_record(group, first.staging_for(group))])
    marker_reads: list[Path] = []
    read_text = Path.read_text

    def counting_read_text(self: Path, *args, **kwargs):
        if self.parent.name == "groups":
            marker_reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    resumed = CorpusWriter(tmp_path / "resumed", ["native", "mmc4"])
    resumed.recover()
    assert len(marker_reads) == 6  # once, at start
    for group in range(6, 12):
        resumed.write_group(group, [finished_record(group, resumed.staging_for(group))])
    assert len(marker_reads) == 6, "writing a group re-read the done markers"
    assert [s.group for s in resumed.group_summaries()] == list(range(12))
    assert len(marker_reads) == 6

    fresh = CorpusWriter(tmp_path / "fresh", ["native", "mmc4"])
    for group in range(12):
        fresh.write_group(group, [finished_record(group, fresh.staging_for(group))])
    for fmt in ("native", "mmc4"):
        for name in SIZES_FILES:
            written = (tmp_path / "resumed" / "shards" / fmt / name).read_bytes()
            assert written == (tmp_path / "fresh" / "shards" / fmt / name).read_bytes()
            assert len(json.loads(written)) == 12
    assert resumed.group_summaries() == fresh.group_summaries()


def test_recover_removes_table_parts_and_shards_that_are_no_finished_group(tmp_path):
    """The build owns the .parquet files of its table folders and the .tar files of its shard folders:
    any that is not a finished group's file (under the exact name the writer gives it) is removed, as
    readers glob them all; other files are left alone. A stray name never stops a resume."""
    writer = CorpusWriter(tmp_path, ["native"])
    writer.write_group(0, [finished_record(0, writer.staging_for(0))])
    strays = [
        tmp_path / "videos" / "part-x.parquet",
        tmp_path / "videos" / "part-0.parquet",  # group 0, but not the name the writer gives it
        tmp_path / "clips" / "copy of part-000000.parquet",
        tmp_path / "shards" / "native" / "backup.tar",
        tmp_path / "shards" / "native" / "7.tar",
    ]
    for stray in strays:
        stray.write_bytes(b"not ours")
    notes = tmp_path / "videos" / "NOTES.txt"
    notes.write_text("kept")

    CorpusWriter(tmp_path, ["native"]).recover()
    assert not [p for p in strays if p.exists()]
    assert notes.read_text() == "kept"
    assert (tmp_path / "videos" / "part-000000.parquet").exists()
    assert (tmp_path / "shards" / "native" / "000000.tar").exists()
    assert json.loads((tmp_path / "shards/native/sizes.json").read_text()) == {"000000.tar": 1}


BOTH = ("native", "mmc4")


def _samples(tar: Path) -> list[dict]:
    return list(wds.WebDataset(str(tar), shardshuffle=False).decode())


def test_a_groups_tars_come_from_the_parts_of_the_records_it_was_given_and_the_parts_then_go(tmp_path):
    """Two attempts at one video (a retried task on a busy node) staged different samples: the group's tar
    holds the one of the record the driver accepted, once, and the staging folder goes with the marker."""
    writer = CorpusWriter(tmp_path, ["native", "mmc4"])
    staging = writer.staging_for(0)
    accepted = finished_record(0, staging, BOTH)
    retry = copy.deepcopy(accepted)
    retry.frames[0].caption, retry.frames[0].jpeg = "another caption", jpeg("green")
    retry.shard_part = None
    ShardSamplesStage(BuildConfig.model_validate({"output": {"formats": ["native", "mmc4"]}})).process([retry])
    assert len(list(Path(staging).iterdir())) == 2 and retry.shard_part != accepted.shard_part

    summary = writer.write_group(0, [accepted, finished_record(1, staging, BOTH)])
    assert summary.samples == {"native": 2, "mmc4": 2}
    [first, second] = _samples(tmp_path / "shards/native/000000.tar")
    assert (first["__key__"], second["__key__"]) == ("vid0", "vid1")
    assert [f["caption"] for f in first["json"]["frames"]] == ["a red square", "a blue square"]
    assert not Path(staging).exists() and (tmp_path / "_state/groups/000000.json").exists()


def test_a_kill_between_staged_parts_and_the_marker_resumes_with_nothing_twice(tmp_path):
    """Killed while groups 1 and 2 were between their staged parts and their markers (group 2's tars made,
    its marker not yet written): the rerun removes their files and parts, rebuilds them whole, and every
    sample is in the shards once, as in a build never killed."""
    killed = CorpusWriter(tmp_path / "out", ["native", "mmc4"])
    killed.write_group(0, [finished_record(0, killed.staging_for(0), BOTH)])
    never: Future = Future()  # a tars task the driver never heard back from
    killed.make_shards = lambda out, group, formats, parts: write_shards(out, group, formats, parts) or never
    killed.write_group(2, [finished_record(2, killed.staging_for(2), BOTH)])
    finished_record(1, killed.staging_for(1), BOTH)  # staged; its group was not complete yet
    assert (tmp_path / "out/shards/native/000002.tar").exists()
    assert not (tmp_path / "out/_state/groups/000002.json").exists()
    assert len(list((tmp_path / "out/_state/parts").rglob("*.part"))) == 2

    resumed = CorpusWriter(tmp_path / "out", ["native", "mmc4"])
    resumed.recover()
    assert resumed.done_groups() == {0} and not (tmp_path / "out/_state/parts").exists()
    assert not (tmp_path / "out/shards/native/000002.tar").exists()
    for group in (1, 2):
        resumed.write_group(group, [finished_record(group, resumed.staging_for(group), BOTH)])
    fresh = CorpusWriter(tmp_path / "fresh", ["native", "mmc4"])
    for group in range(3):
        fresh.write_group(group, [finished_record(group, fresh.staging_for(group), BOTH)])
    for fmt in BOTH:
        tars = sorted((tmp_path / "out/shards" / fmt).glob("*.tar"))
        keys = [sample["__key__"] for tar in tars for sample in _samples(tar)]
        assert keys == ["vid0", "vid1", "vid2"]
        for tar in tars:
            assert tar.read_bytes() == (tmp_path / "fresh/shards" / fmt / tar.name).read_bytes()
        assert json.loads((tmp_path / "out/shards" / fmt / "sizes.json").read_text()) == {
            "000000.tar": 1,
            "000001.tar": 1,
            "000002.tar": 1,
        }
    assert not list((tmp_path / "out/_state/parts").rglob("*"))


def test_a_missing_part_fails_the_group_in_one_line_and_shows_no_tar(tmp_path):
    """A part the tars task cannot see (an --out that is a local folder on another node): the group is not
    marked, no tar of it appears, and the error says what --out must be."""
    writer = CorpusWriter(tmp_path, ["native"])
    record = finished_record(0, writer.staging_for(0))
    Path(record.shard_part.path).unlink()
    with pytest.raises(StorageError) as caught:
        writer.write_group(0, [record])
    message = str(caught.value)
    assert message.startswith("cannot write the shards of group 000000: 1 staged samples are not under ")
    assert "every Ray node reaches" in message and "\n" not in message
    assert not list((tmp_path / "shards").rglob("*.tar")) and writer.done_groups() == set()


def test_a_group_whose_tars_landed_on_another_nodes_disk_is_not_marked(tmp_path):
    """A local --out on a cluster whose nodes do not share it: the tars task finds every part (its node
    staged them) and writes the tars on its own disk. The driver must not mark the group over no tars."""
    here, other_node = tmp_path / "head", tmp_path / "worker"
    writer = CorpusWriter(here, ["native", "mmc4"])
    record = finished_record(0, writer.staging_for(0), ("native", "mmc4"))
    # The worker's disk holds the staged part (it made it) and gets the tars.
    elsewhere = other_node / Path(record.shard_part.path).relative_to(here)
    elsewhere.parent.mkdir(parents=True)
    Path(record.shard_part.path).rename(elsewhere)
    writer.make_shards = lambda out, group, formats, parts: make_shards_here(
        other_node, group, formats, [ShardPart(str(elsewhere), part.spans) for part in parts]
    )
    with pytest.raises(StorageError, match="every Ray node reaches") as caught:
        writer.write_group(0, [record])
    assert "group 000000" in str(caught.value)
    assert (other_node / "shards" / "native" / "000000.tar").is_file()
    assert writer.done_groups() == set() and not (here / "_state" / "groups" / "000000.json").exists()


def test_tables_carry_no_credential_from_a_source_or_an_error(tmp_path):
    writer = CorpusWriter(tmp_path, ["native"])
    failed = VideoRecord("vid0", "https://user:hunter2@example.com/v.mp4?X-Amz-Signature=f00dcafe", 0)
    # A downloader's message quotes the URL it fetched (the locator, credentials and all).
    failed.fail(DOWNLOAD_FAILED, "HTTP Error 403: Forbidden for https://user:hunter2@example.com/v.mp4?sig=f00dcafe")
    assert "hunter2" not in failed.error and "f00dcafe" not in failed.error
    filtered = VideoRecord("vid1", "/v/1.mp4", 1, status="filtered")
    filtered.error = "set without fail(): s3://AKIAEXAMPLE:SECRETKEY@bucket/x"
    writer.write_group(0, [failed, filtered])
    for part in tmp_path.rglob("*"):
        if part.is_file():
            data = part.read_bytes()
            assert not any(s in data for s in (b"hunter2", b"f00dcafe", b"SECRETKEY", b"AKIAEXAMPLE")), part
    [row, _] = pq.read_table(tmp_path / "videos" / "part-000000.parquet").to_pylist()
    assert row["source"] == "https://example.com/v.mp4" and row["error"].endswith("for https://example.com/v.mp4")
