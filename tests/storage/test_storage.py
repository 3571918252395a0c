"""storage: local paths stay pathlib.Path; s3:// URIs read and write a real S3 server (moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmo_data.storage import RemotePath, StorageError, filesystem, location, open_atomic, remove_tree, write_atomic


def test_local_paths_stay_paths_and_uris_become_remote_paths(tmp_path):
    assert location(tmp_path) is tmp_path
    assert location("corpus/out") == Path("corpus/out")
    assert location(f"file://{tmp_path}") == tmp_path
    remote = location("s3://bucket/some/prefix/")
    assert isinstance(remote, RemotePath) and str(remote) == "s3://bucket/some/prefix"
    part = remote / "videos" / "part-000001.parquet"
    assert (part.name, part.stem, part.suffix, part.bucket) == (
        "part-000001.parquet",
        "part-000001",
        ".parquet",
        "bucket",
    )
    assert part.parent.parent == remote and str(part.relative_to(remote)) == "videos/part-000001.parquet"


def test_a_bucket_reads_and_writes_like_a_folder(s3):
    bucket = s3.create_bucket("storage-roundtrip")
    root = location(f"s3://{bucket}/corpus")
    assert not root.exists() and root.glob("*") == []
    write_atomic(root / "videos" / "part-000000.parquet", b"PAR1")
    write_atomic(root / "videos" / "part-000001.parquet", b"PAR1")
    write_atomic(root / "_state" / "run.json", b"{}")
    assert s3.keys(bucket) == [
        "corpus/_state/run.json",
        "corpus/videos/part-000000.parquet",
        "corpus/videos/part-000001.parquet",
    ]
    assert root.is_dir() and (root / "videos").is_dir() and (root / "_state" / "run.json").is_file()
    assert [p.name for p in (root / "videos").glob("part-*.parquet")] == ["part-000000.parquet", "part-000001.parquet"]
    assert [p.name for p in root.rglob("*.json")] == ["run.json"]
    assert sorted(p.name for p in root.iterdir()) == ["_state", "videos"]
    assert (root / "_state" / "run.json").read_text() == "{}"
    (root / "videos" / "part-000001.parquet").unlink()
    (root / "videos" / "part-000009.parquet").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (root / "nothing.json").read_bytes()
    # (pyarrow keeps an empty "corpus/videos/" marker object after a delete; listings skip it)
    assert [k for k in s3.keys(bucket, "corpus/videos") if not k.endswith("/")] == ["corpus/videos/part-000000.parquet"]
    assert [p.name for p in (root / "videos").glob("*")] == ["part-000000.parquet"]


def test_wrong_credentials_fail_in_one_line_without_the_secret(s3, monkeypatch):
    bucket = s3.create_bucket("storage-creds")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-0123456789")
    filesystem.cache_clear()
    with pytest.raises(StorageError) as caught:
        location(f"s3://{bucket}/ids.txt").read_bytes()
    message = str(caught.value)
    assert message.startswith(f"cannot read s3://{bucket}/ids.txt: ") and "\n" not in message
    assert "not-the-secret-key" not in message and s3.secret_key not in message


class Interrupted(Exception):
    pass


def test_open_atomic_shows_a_file_written_in_pieces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "shards" / "000000.tar"
    with open_atomic(target) as sink:
        sink.write(b"first ")
        assert not target.exists()  # a temporary name until it is whole
        sink.write(memoryview(b"second"))
    assert target.read_bytes() == b"first second"
    with pytest.raises(Interrupted), open_atomic(tmp_path / "shards" / "000001.tar") as sink:
        sink.write(b"half")
        raise Interrupted
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["000000.tar"]
    remove_tree(tmp_path / "shards")
    remove_tree(tmp_path / "shards")  # nothing there: nothing to do
    assert not (tmp_path / "shards").exists()


def test_open_atomic_on_a_bucket_is_one_upload_and_an_error_leaves_no_object(s3):
    bucket = s3.create_bucket("storage-atomic")
    root = location(f"s3://{bucket}/corpus")
    big = bytes(range(256)) * 40_000  # 10 MB: more than one part of a multipart upload
    with open_atomic(root / "shards" / "000000.tar") as sink:
        sink.write(big[:6_000_000])
        sink.write(big[6_000_000:])
    assert (root / "shards" / "000000.tar").read_bytes() == big
    with pytest.raises(Interrupted), open_atomic(root / "shards" / "000001.tar") as sink:
        sink.write(big)
        raise Interrupted
    assert [p.name for p in (root / "shards").glob("*.tar")] == ["000000.tar"]
    for k in range(3):
        write_atomic(root / "_state" / "parts" / "000004" / f"{k}.part", b"x")
    remove_tree(root / "_state" / "parts")
    remove_tree(root / "_state" / "parts")
    assert root.rglob("*.part") == [] and (root / "shards" / "000000.tar").exists()


@pytest.fixture(scope="module")
def gcs_server():
    """A GCS server on loopback (gcp-storage-emulator, in memory), with one bucket; stopped at the end."""
    import os
    import signal
    import subprocess
    import sys

    from s3server import free_port, wait_for_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port)]
        + ["--in-memory", "--default-bucket", "gcs-corpus"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(server, port, "the GCS emulator")
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    filesystem.cache_clear()
    yield location("gs://gcs-corpus/corpus")
    filesystem.cache_clear()


def test_a_bucket_on_gcs_reads_and_writes_like_a_folder_and_takes_a_groups_tars(gcs):
    """gs:// through pyarrow's GCS client, against a GCS server on loopback: samples staged there, the
    group's tar made from them, a broken write leaving nothing, the staging prefix removed."""
    import io
    import tarfile

    from cosmo_data.pipeline.writer import write_shards
    from cosmo_data.stages.shard_samples import stage_part, tar_members

    staging = str(gcs / "_state" / "parts" / "000000")
    parts = [
        stage_part(staging, k, {"native": tar_members({"__key__": f"doc{k}", "json": b"{}", "0.jpg": b"jpeg" * k})})
        for k in range(2)
    ]
    write_shards(gcs, 0, ["native"], parts)
    with tarfile.open(fileobj=io.BytesIO((gcs / "shards" / "native" / "000000.tar").read_bytes())) as tar:
        assert tar.getnames() == ["doc0.0.jpg", "doc0.json", "doc1.0.jpg", "doc1.json"]
    with pytest.raises(Interrupted), open_atomic(gcs / "shards" / "native" / "000001.tar") as sink:
        sink.write(b"half a tar")
        raise Interrupted
    assert [p.name for p in (gcs / "shards" / "native").glob("*")] == ["000000.tar"]
    assert len(gcs.rglob("*.part")) == 2
    remove_tree(gcs / "_state" / "parts")
    assert gcs.rglob("*.part") == [] and (gcs / "shards").is_dir()


def test_a_scheme_pyarrow_lacks_goes_through_fsspec():
    """fsspec's in-process memory:// filesystem (one process only: a build's Ray workers would not see it)."""
    root = location("memory://fsspec-bucket/corpus")
    assert type(root.fs).__name__ == "PyFileSystem"
    write_atomic(root / "videos" / "part-000000.parquet", b"PAR1")
    with open_atomic(root / "shards" / "000000.tar") as sink:
        sink.write(b"tar ")
        sink.write(b"bytes")
    assert (root / "shards" / "000000.tar").read_bytes() == b"tar bytes"
    assert [p.name for p in root.rglob("*")] == ["000000.tar", "part-000000.parquet"]
    assert sorted(p.name for p in root.iterdir()) == ["shards", "videos"]
    remove_tree(root / "shards")
    assert [p.name for p in root.rglob("*")] == ["part-000000.parquet"] and not (root / "nothing").exists()


def test_a_uri_with_credentials_or_one_slash_is_refused_without_the_secret():
    with pytest.raises(StorageError, match="credentials in a storage URI") as refused:
        location("s3://AKIAEXAMPLE:SECRETKEY@bucket/corpus")
    assert "SECRETKEY" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
    # s3:/bucket was a local folder named "s3:".
    with pytest.raises(StorageError, match="s3://bucket/corpus"):
        location("s3:/bucket/corpus")
    assert location("C:/data") == Path("C:/data")  # a drive letter is no scheme
    assert "hunter2" not in str(StorageError("cannot read https://u:hunter2@h/x?sig=s: 403"))
