import base64
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_factory import Corpus, build_corpus

from cosmo_data.corpus.validate import validate
from cosmo_data.corpus.validation_report import format_report


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Corpus:
    """6 ok videos and 2 failures in 3 groups of 3, all three formats."""
    return build_corpus(tmp_path_factory.mktemp("validate") / "out", n_ok=6, n_failed=2, videos_per_group=3)


@pytest.fixture
def out(pristine, tmp_path) -> Path:
    """A copy of the corpus that a test may damage."""
    return Path(shutil.copytree(pristine.out, tmp_path / "out"))


def rewrite_tar(path: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite a tar member by member: change returns the new bytes, or None to drop the member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            data = change(name, data)
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def set_size(out: Path, fmt: str, tar_name: str, n: int, manifests=("sizes.json", "num_samples.json")) -> None:
    for manifest in manifests:
        sizes_file = out / "shards" / fmt / manifest
        sizes = json.loads(sizes_file.read_text())
        sizes[tar_name] = n
        sizes_file.write_text(json.dumps(sizes))


def test_a_built_corpus_is_valid(pristine):
    report = validate(pristine.out)
    assert report.problems == []
    assert report.ok
    assert report.counts["groups"] == 3 and report.counts["documents"] == 6
    assert [report.counts[f"samples.{fmt}"] for fmt in ("native", "mmc4", "cosmo")] == [6, 6, 6]
    assert report.counts["images_decoded"] == 18 + 18  # native members and mmc4 image_base64
    text = format_report(report)
    assert text.splitlines()[0] == f"{pristine.out}: valid"
    assert "native 6 samples · mmc4 6 samples · cosmo 6 samples" in text


def test_a_keyframe_missing_from_a_native_shard(out):
    rewrite_tar(out / "shards/native/000000.tar", lambda name, data: None if name == "vid001_b.1.jpg" else data)
    report = validate(out)
    assert report.problems == [
        "shards/native/000000.tar: vid001_b: json names images that are not members: 1.jpg",
        "shards/native/000000.tar: vid001_b: keyframe members do not match the frames table: no image for frame_idx 1",
    ]
    assert not report.ok
    text = format_report(report)
    assert "INVALID: 2 problems" in text.splitlines()[0]
    assert "  - shards/native/000000.tar: vid001_b: json names images that are not members: 1.jpg" in text


def test_sizes_json_that_lies(out):
    set_size(out, "native", "000001.tar", 4, manifests=["sizes.json"])
    set_size(out, "mmc4", "000009.tar", 1, manifests=["sizes.json"])
    assert validate(out).problems == [
        "shards/native/sizes.json says 000001.tar holds 4 samples; it holds 3",
        "shards/mmc4/sizes.json lists 000009.tar, which does not exist",
    ]


def test_no_num_samples_json_for_cosmos_loader(out):
    """Without it COSMO assumes 5,000 samples per shard."""
    (out / "shards/cosmo/num_samples.json").unlink()
    assert validate(out).problems == ["shards/cosmo/num_samples.json is missing"]


def test_a_document_missing_from_one_format(out):
    rewrite_tar(out / "shards/mmc4/000001.tar", lambda name, data: None if name.startswith("vid004_e.") else data)
    set_size(out, "mmc4", "000001.tar", 2)  # an honest manifest: only the missing document is wrong
    assert validate(out).problems == [
        "mmc4: 1 document missing from the shards: vid004_e",
        "sample counts differ across formats that should hold the same documents: native 6, mmc4 5, cosmo 6",
    ]


def test_a_document_twice_in_a_format(out):
    with tarfile.open(out / "shards/native/000000.tar") as tar:
        copied = [(m.name, tar.extractfile(m).read()) for m in tar if m.name.startswith("vid000_a.")]
    rewrite_tar(out / "shards/native/000001.tar", lambda name, data: data)
    with tarfile.open(out / "shards/native/000001.tar", "a") as tar:
        for name, data in copied:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    set_size(out, "native", "000001.tar", 4)
    problems = validate(out).problems
    assert "native: 1 document appears in more than one sample: vid000_a" in problems


def test_an_image_that_does_not_decode(out):
    rewrite_tar(out / "shards/native/000001.tar", lambda name, data: data[:200] if name == "vid003_d.0.jpg" else data)
    problems = validate(out).problems
    assert len(problems) == 1
    assert problems[0].startswith("shards/native/000001.tar: vid003_d.0.jpg does not decode as an image: OSError")


def test_mmc4_image_base64_that_does_not_decode(out):
    def spoil(name: str, data: bytes) -> bytes:
        if name != "vid000_a.json":
            return data
        document = json.loads(data)
        document["image_info"][0]["image_base64"] = "not base64!"
        document["image_info"][1]["image_base64"] = base64.b64encode(b"GIF89a but not really").decode()
        return json.dumps(document).encode()

    rewrite_tar(out / "shards/mmc4/000000.tar", spoil)
    problems = validate(out).problems
    assert len(problems) == 2
    assert problems[0].startswith("shards/mmc4/000000.tar: vid000_a: image_info[0] image_base64 is not base64")
    assert problems[1].startswith(
        "shards/mmc4/000000.tar: vid000_a: image_info[1] image_base64 does not decode as an image"
    )


def test_a_cosmo_mp4_that_does_not_open(out):
    rewrite_tar(out / "shards/cosmo/000000.tar", lambda name, data: b"\0" * 64 if name == "vid002_c.mp4" else data)
    problems = validate(out).problems
    assert len(problems) == 1 and problems[0].startswith("shards/cosmo/000000.tar: vid002_c.mp4 does not open")


def test_cosmo_clip_times_that_point_into_a_neighbouring_clip(out):
    """A clip string two seconds early (clip 1 is [6, 12) s, named "0:00:07 - 0:00:12"), as the joined
    mp4s before the timing fix had them."""

    def shift_first_clip(name: str, data: bytes) -> bytes:
        if name != "vid002_c.json":
            return data
        meta = json.loads(data)
        clips = json.loads(meta["clips"])
        start, end = (int(part.rsplit(":", 1)[1]) for part in clips[1]["clip"].split(" - "))
        clips[1]["clip"] = f"0:00:{start - 2:02d} - 0:00:{end - 2:02d}"
        meta["clips"] = json.dumps(clips)
        return json.dumps(meta).encode()

    rewrite_tar(out / "shards/cosmo/000000.tar", shift_first_clip)
    problems = validate(out).problems
    assert len(problems) == 1
    assert problems[0].startswith("shards/cosmo/000000.tar: vid002_c: COSMO's loader may take frames at 5.00")
    assert problems[0].endswith("outside its clip [6.0, 12.0) s")


def test_a_cosmo_mp4_without_a_constant_frame_rate(out, tmp_path):
    """Copied packets whose last frame lasts 16x too long (the old clip mp4s): COSMO's frame arithmetic
    drifts, so the mp4 is refused whatever its clip strings say."""

    def stretch_last_frame(name: str, data: bytes) -> bytes:
        if name != "vid002_c.mp4":
            return data
        source, target = tmp_path / "in.mp4", tmp_path / "out.mp4"
        source.write_bytes(data)
        with av.open(str(source)) as inp, av.open(str(target), "w", format="mp4") as output:
            stream = output.add_stream_from_template(inp.streams.video[0])
            packets = [p for p in inp.demux(video=0) if p.pts is not None]
            packets[-1].duration *= 16
            for packet in packets:
                packet.stream = stream
                output.mux(packet)
        return target.read_bytes()

    rewrite_tar(out / "shards/cosmo/000000.tar", stretch_last_frame)
    problems = validate(out).problems
    assert len(problems) == 1 and "vid002_c.mp4 has no constant frame rate" in problems[0]


def test_a_parquet_part_with_the_wrong_schema(out):
    part = out / "videos/part-000001.parquet"
    table = pq.read_table(part)
    table = table.set_column(table.schema.get_field_index("n_clips"), "n_clips", table["n_clips"].cast(pa.int64()))
    pq.write_table(table.drop_columns(["fps"]), part)
    problems = validate(out).problems
    assert problems == [
        "videos/part-000001.parquet does not match the videos schema: column fps missing; "
        "column n_clips is int64, expected int32"
    ]


def test_an_unfinished_build(out):
    (out / "_state/groups/000002.json").unlink()
    (out / "frames/part-000001.parquet").unlink()
    problems = validate(out).problems
    assert problems[:3] == [
        "build incomplete: 1 group of 3 not finished (000002); rerun `cosmo-data build` with the same --out to finish",
        "group 000001 is marked done but lacks frames/part-000001.parquet",
        "files outside any finished group (left by an interrupted build?): chapters/part-000002.parquet, "
        "clips/part-000002.parquet, documents/part-000002.parquet, embeddings/part-000002.parquet, "
        "frames/part-000002.parquet (+5 more)",
    ]


def test_tables_that_disagree_with_each_other(out):
    part = out / "documents/part-000000.parquet"
    table = pq.read_table(part)
    pq.write_table(table.filter(pa.compute.not_equal(table["doc_id"], "vid001_b")), part)
    problems = validate(out).problems
    assert "1 case of ok videos without a document: vid001_b" in problems
    assert "native: 1 sample with no row in documents: vid001_b" in problems


def test_a_folder_that_is_not_a_build(tmp_path):
    report = validate(tmp_path)
    assert report.problems[0] == "_state/run.json is missing: this folder was not written by `cosmo-data build`"
    assert not validate(tmp_path / "nowhere").ok


@pytest.mark.slow
def test_a_real_build_is_valid(demo_corpus):
    report = validate(demo_corpus)
    assert report.problems == []
    assert report.counts["documents"] > 0 and report.counts["images_decoded"] > 0
