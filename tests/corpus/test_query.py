import csv
import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from corpus_factory import build_corpus

from cosmo_data.corpus.query import QueryError, connect, run_query
from cosmo_data.schemas.tables import TABLES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("query") / "out", n_ok=4, n_failed=2, videos_per_group=2)


def test_every_table_is_a_view_over_all_its_part_files(corpus):
    connection = connect(corpus.out)
    for table in TABLES:
        expected = sum(pq.read_metadata(p).num_rows for p in (corpus.out / table).glob("*.parquet"))
        assert connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == expected
    assert len(list((corpus.out / "videos").glob("*.parquet"))) == 3
    assert connection.execute("SELECT count(*) FROM videos").fetchone()[0] == 6


def test_a_table_without_files_is_an_empty_view_with_the_schema_columns(tmp_path):
    out = build_corpus(tmp_path / "out", n_ok=1, n_failed=1).out
    shutil.rmtree(out / "documents")
    connection = connect(out)
    columns = [row[0] for row in connection.execute("DESCRIBE documents").fetchall()]
    assert columns == TABLES["documents"].names
    rows = connection.execute(
        "SELECT v.video_id, d.n_tokens FROM videos v LEFT JOIN documents d USING (video_id) ORDER BY 1"
    ).fetchall()
    assert rows == [("bad000", None), ("vid000_a", None)]


def test_table_output_is_aligned_with_a_row_count(corpus):
    text = run_query(corpus.out, "SELECT video_id, status, n_clips FROM videos ORDER BY source_index")
    lines = text.splitlines()
    assert lines[0].split() == ["video_id", "status", "n_clips"]
    assert lines[-1] == "(6 rows)"
    assert lines[2].split() == ["vid000_a", "ok", "3"]
    assert lines[-2].split() == ["bad001", "decode_failed", "0"]
    # n_clips is right-aligned under its header.
    assert len({len(line) for line in lines[2:-1]}) == 1


def test_csv_output_parses_back_with_nested_values_as_json(corpus):
    text = run_query(corpus.out, "SELECT video_id, timings, error FROM videos ORDER BY source_index", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["video_id"] for r in rows] == ["vid000_a", "vid001_b", "vid002_c", "vid003_d", "bad000", "bad001"]
    first = corpus.records[0]
    assert json.loads(rows[0]["timings"]) == pytest.approx(first.timings)
    assert rows[0]["error"] == ""
    assert rows[5]["error"] == corpus.records[5].error  # multi-line text survives quoting


def test_json_output_keeps_types(corpus):
    text = run_query(
        corpus.out, "SELECT doc_id, text_list, image_info, n_tokens FROM documents ORDER BY doc_id", "json"
    )
    documents = json.loads(text)
    record = corpus.records[0]
    assert documents[0]["doc_id"] == record.video_id
    assert documents[0]["text_list"] == [s.text for s in record.document.sentences]
    assert [i["matched_sim"] for i in documents[0]["image_info"]] == record.document.matched_sim
    assert documents[0]["n_tokens"] == record.document.n_tokens


def test_bad_sql_raises_query_error_with_duckdbs_message(corpus):
    with pytest.raises(QueryError, match="syntax error"):
        run_query(corpus.out, "SELEC * FROM videos")
    with pytest.raises(QueryError, match='column "nope" not found'):
        run_query(corpus.out, "SELECT nope FROM videos")
    with pytest.raises(QueryError, match="unknown output format"):
        run_query(corpus.out, "SELECT 1", "xml")


def test_a_folder_that_is_not_a_build_is_refused(tmp_path):
    with pytest.raises(QueryError, match="not a build output"):
        connect(tmp_path)
    with pytest.raises(QueryError, match="not a directory"):
        connect(tmp_path / "missing")


def test_paths_with_quotes_and_glob_characters(tmp_path):
    out = build_corpus(tmp_path / "it's [a] corpus*", n_ok=1, n_failed=0).out
    assert run_query(out, "SELECT count(*) AS n FROM frames", "json") == '[\n  {\n    "n": 3\n  }\n]'
