"""A source's credentials (a password in the URL, a presigned query) reach the downloader and nothing else:
one real build from such sources, then every file it wrote, its console output, its trace and Ray's own
logs are searched for each secret."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import duckdb
import pytest
from loopback import serve_directory
from typer.testing import CliRunner

from cosmo_data.cli import TINY_CONFIG, app
from cosmo_data.pipeline import generated_media as samples
from cosmo_data.pipeline.ray_runner import TRACE_ENV

pytestmark = pytest.mark.slow

SECRETS = ("hunter2", "f00dcafe", "AKIAEXAMPLE", "SESSIONTOKEN")


def presigned(url: str) -> str:
    return (
        f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3"
        "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Security-Token=SESSIONTOKEN&X-Amz-Signature=f00dcafe"
    )


def with_password(url: str) -> str:
    return url.replace("http://", "http://reader:hunter2@")


def test_a_build_from_sources_with_credentials_writes_and_prints_none_of_them(tmp_path, monkeypatch):
    media = tmp_path / "media"
    media.mkdir()
    for name, words in (("first.mp4", "Hello there."), ("second.mp4", "Good morning.")):
        samples.make_sample_video(
            media / name, segments=[1.5, 1.5], transitions=[samples.CUT], size=(160, 120), fps=10, speech=[words]
        )
    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    # Ray's own session and worker logs, in a folder of this test (short: Ray's socket paths must fit).
    ray_logs = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_logs))
    monkeypatch.setenv(TRACE_ENV, str(trace))
    try:
        with serve_directory(media) as server:
            sources = [
                with_password(server.url("/files/first.mp4")),
                presigned(server.url("/files/second.mp4")),
                with_password(presigned(server.url("/files/missing.mp4"))),  # fails: its error quotes the URL
            ]
            (tmp_path / "sources.txt").write_text("\n".join(sources) + "\n")
            result = CliRunner().invoke(
                app,
                ["build", "-s", str(tmp_path / "sources.txt"), "-o", str(out), "-c", str(TINY_CONFIG)]
                + ["--set", "download.retries=0", "--set", "output.videos_per_shard=2"],
            )
        assert result.exit_code == 0, result.output
        rows = duckdb.sql(
            f"SELECT source, status, error FROM read_parquet('{out}/videos/*.parquet') ORDER BY 1"
        ).fetchall()
        base = server.base_url
        assert rows == [
            (f"{base}/files/first.mp4", "ok", None),
            (f"{base}/files/missing.mp4", "video_unavailable", rows[1][2]),
            (f"{base}/files/second.mp4", "ok", None),
        ], rows
        assert "404" in rows[1][2]
        written = [path for path in out.rglob("*") if path.is_file()]
        assert {"build.json", "000000.tar", "part-000000.parquet"} <= {path.name for path in written}
        ray_files = [path for path in ray_logs.rglob("*") if path.is_file() and not path.is_socket()]
        assert any(path.suffix in (".out", ".err") for path in ray_files)  # its workers' output was kept there
        searched = written + [trace] + ray_files
        for path in searched:
            data = path.read_bytes()
            assert not [secret for secret in SECRETS if secret.encode() in data], path
        assert not [secret for secret in SECRETS if secret in result.output], result.output
        # The samples name their source, redacted.
        assert any(f"{base}/files/first.mp4".encode() in path.read_bytes() for path in out.rglob("*.tar"))
    finally:
        shutil.rmtree(ray_logs, ignore_errors=True)
