"""A build whose sources and corpus live on object storage: a real S3 server on loopback (moto), the real
build, writer and shard samples on an embedded Ray, a stand-in for the video and model stages."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from cosmo_data.cli import app
from cosmo_data.pipeline.build import build
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import Clip, Document, Frame, Segment, Sentence, VideoRecord
from cosmo_data.stages.base import Resources
from cosmo_data.stages.shard_samples import ShardSamplesStage
from cosmo_data.storage import filesystem, location

CLI = str(Path(sys.executable).with_name("cosmo-data"))
IDS = [f"video{k:06d}" for k in range(5)]  # 11 characters: YouTube ids, never downloaded here
FORMATS = ["native", "mmc4"]


def _jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (shade, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


class MadeUpVideoStage:
    """Stands in for the video and model stages: each video becomes a small finished document."""

    name = "video"
    resources = Resources(cpus=1)
    batch_size = 1

    def setup(self) -> None:
        pass

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        for record in batch:
            record.duration_s, record.width, record.height, record.language = 4.0, 32, 24, "en"
            record.clips = [Clip(0, 0.0, 2.0, "start"), Clip(1, 2.0, 4.0, "cut")]
            record.frames = [
                Frame(0, 0, 1.0, 32, 24, _jpeg(40), "a red square"),
                Frame(1, 1, 3.0, 32, 24, _jpeg(90), "a darker square"),
            ]
            record.transcript = [Segment(0, 0.0, 4.0, f"Hello {record.video_id}.", -0.3, 0.01)]
            sentences = [Sentence("a red square", 0.0, 2.0, "caption"), Sentence("Hello.", 0.0, 4.0, "asr")]
            record.document = Document(record.video_id, sentences, [0, 1], [[0.3, 0.1], [0.0, 0.4]], [0, 1], [0.3, 0.4])
        return batch


def _build(source: str, out: str):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    config = BuildConfig.model_validate(
        {"output": {"videos_per_shard": 2, "formats": FORMATS, "resources": {"cpus": 1}}}
    )
    return build([source], out, config, stages_factory=lambda c: [MadeUpVideoStage(), ShardSamplesStage(c)])


def _video_ids(s3, bucket: str) -> list[str]:
    fs = filesystem("s3")
    parts = [f"{bucket}/{key}" for key in s3.keys(bucket, "corpus/videos/") if key.endswith(".parquet")]
    return sorted(pq.read_table(parts, filesystem=fs).column("video_id").to_pylist())


@pytest.mark.slow
def test_a_build_from_s3_to_s3_resumes_and_reads_back_with_no_local_copy(s3, tmp_path, monkeypatch):
    bucket = s3.create_bucket("build-s3")
    lines = IDS + [IDS[0], "/local/file.mp4", "not a source"]  # a duplicate, a path (no machine to be on), junk
    source = s3.put(bucket, "lists/ids.txt", ("\n".join(lines) + "\n").encode())
    out = f"s3://{bucket}/corpus"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    first = _build(source, out)
    assert (first.sources, first.ok, first.groups_written) == (7, 5, 4)
    assert first.failures == {"invalid_source": 2}
    keys = s3.keys(bucket, "corpus/")
    for group in ("000000", "000001", "000002", "000003"):
        assert f"corpus/_state/groups/{group}.json" in keys
        for table in ("videos", "clips", "frames", "transcripts", "documents"):
            assert f"corpus/{table}/part-{group}.parquet" in keys
        for fmt in FORMATS:
            assert f"corpus/shards/{fmt}/{group}.tar" in keys
    for name in ("corpus/build.json", "corpus/_state/run.json", "corpus/shards/mmc4/sizes.json"):
        assert name in keys
    assert "corpus/shards/native/num_samples.json" in keys and not [k for k in keys if ".tmp-" in k]
    # The workers staged each video's samples in the bucket; the tars made, the parts are gone.
    assert not [k for k in keys if k.startswith("corpus/_state/parts/") and not k.endswith("/")]
    summary = json.loads(location(out + "/build.json").read_text())
    assert sum(summary["videos_per_node"].values()) == 5 and len(summary["videos_per_node"]) == 1
    assert list(workdir.iterdir()) == []  # no local copy of anything

    # A rerun resumes: nothing to do. Then a run killed after group 1's files, before its marker.
    again = _build(source, out)
    assert (again.groups_written, again.groups_resumed) == (0, 4)
    s3.client().delete_object(Bucket=bucket, Key="corpus/_state/groups/000001.json")
    resumed = _build(source, out)
    assert (resumed.groups_written, resumed.groups_resumed) == (1, 3)
    ids = _video_ids(s3, bucket)
    assert len(ids) == len(set(ids)) == 7 and set(IDS) <= set(ids)

    # The corpus commands read it where it is.
    runner = CliRunner()
    stats = runner.invoke(app, ["stats", out, "--json"])
    assert stats.exit_code == 0, stats.output
    numbers = json.loads(stats.output)
    assert numbers["samples"] == 5 and numbers["videos_ok"] == 5
    query = runner.invoke(app, ["query", out, "SELECT count(DISTINCT video_id) AS n FROM videos", "-f", "csv"])
    assert query.exit_code == 0 and query.output.split() == ["n", "7"]
    checked = runner.invoke(app, ["validate", out])
    assert checked.exit_code == 0, checked.output
    preview = runner.invoke(app, ["preview", out, "--out", str(tmp_path / "preview.html")])
    assert preview.exit_code == 0, preview.output
    assert "data:image/jpeg;base64" in (tmp_path / "preview.html").read_text()
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("case", ["missing key", "no such bucket", "wrong credentials"])
def test_a_hostile_source_on_s3_is_one_error_line(case, s3, tmp_path):
    bucket = s3.create_bucket("hostile-sources")
    present = s3.put(bucket, "ids.txt", b"aaaaaaaaaa0\n")
    source, env = {
        "missing key": (f"s3://{bucket}/nothing-here.txt", {}),
        "no such bucket": ("s3://no-such-bucket-here/ids.txt", {}),
        "wrong credentials": (present, {"AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"}),
    }[case]
    result = subprocess.run(
        [CLI, "build", "--source", source, "--out", f"s3://{bucket}/out"],
        env={**__import__("os").environ, **s3.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and s3.secret_key not in result.stderr
    assert "wrong-secret" not in result.stderr and s3.access_key not in result.stderr
    expected = {
        "missing key": "does not exist (no such object)",
        "no such bucket": "bucket 'no-such-bucket-here' does not exist",
        "wrong credentials": "cannot reach",
    }
    assert expected[case] in lines[0], lines[0]
    assert s3.keys(bucket, "out/") == []
