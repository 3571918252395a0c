import io
import json

import duckdb
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from cosmo_data.pipeline.writer import CorpusWriter
from cosmo_data.schemas import tables as schemas
from cosmo_data.schemas.records import (
    DOWNLOAD_FAILED,
    Clip,
    Document,
    Frame,
    Segment,
    Sentence,
    VideoRecord,
)


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def finished_record(index: int) -> VideoRecord:
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
    return record


def test_group_is_written_with_schemas_and_reads_back(tmp_path):
    failed = VideoRecord("bad", "/v/bad.mp4", 2)
    failed.fail(DOWNLOAD_FAILED, "ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found")
    writer = CorpusWriter(tmp_path, ["native"])
    summary = writer.write_group(0, [failed, finished_record(1), finished_record(0)])
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
    a.write_group(3, [finished_record(0)])
    b.write_group(3, [finished_record(0)])
    for rel in ("shards/native/000003.tar", "documents/part-000003.parquet"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_recover_removes_unfinished_groups_and_temp_files(tmp_path):
    writer = CorpusWriter(tmp_path, ["native"])
    writer.write_group(0, [finished_record(0)])
    writer.write_group(1, [finished_record(1)])
    # A run killed after writing group 2's files but before its marker, mid-way through a temp file.
    writer.write_group(2, [finished_record(2)])
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
