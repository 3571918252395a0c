"""The corpus commands on a corpus in a bucket (a real S3 server on loopback) read exactly what they read
from the same corpus in a folder."""

from __future__ import annotations

import pytest

from cosmo_data.corpus.preview import write_preview
from cosmo_data.corpus.query import run_query
from cosmo_data.corpus.stats import compute_stats
from cosmo_data.corpus.validate import validate


@pytest.fixture
def s3_corpus(demo_corpus, s3) -> str:
    bucket = s3.create_bucket("corpus-readers")
    client = s3.client()
    for path in sorted(p for p in demo_corpus.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"demo/{path.relative_to(demo_corpus)}")
    return f"s3://{bucket}/demo"


def rounded(value):
    """Floats to 9 digits (DuckDB sums in another order over other files), everything else as it is."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


@pytest.mark.slow
def test_stats_query_validate_and_preview_read_a_corpus_in_a_bucket(demo_corpus, s3_corpus, tmp_path):
    assert rounded(compute_stats(s3_corpus)) == rounded(compute_stats(demo_corpus))
    sql = "SELECT video_id, status, node_id, n_clips FROM videos ORDER BY source_index"
    assert run_query(s3_corpus, sql, "json") == run_query(demo_corpus, sql, "json")
    remote, local = validate(s3_corpus), validate(demo_corpus)
    assert remote.ok, remote.problems
    assert remote.counts == local.counts
    shown = write_preview(s3_corpus, tmp_path / "remote.html", n=5)
    expected = write_preview(demo_corpus, tmp_path / "local.html", n=5)
    assert (shown.documents, shown.images, shown.missing_images) == (expected.documents, expected.images, 0)
    assert shown.images > 0


def test_a_bucket_without_a_corpus_is_a_query_error(s3):
    from cosmo_data.corpus.query import QueryError

    bucket = s3.create_bucket("corpus-empty")
    with pytest.raises(QueryError, match="is not a directory"):
        run_query(f"s3://{bucket}/nothing", "SELECT 1")
