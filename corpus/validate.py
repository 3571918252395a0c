"""`cosmo-data validate`: check a built corpus against the schemas and against itself.

What is checked:
- the build finished: every group the sources make has a done marker, every marked group has all its
  files (one Parquet part per table, one tar per format) and no file lies outside a finished group;
- every Parquet part has its table's schema; the tables agree with each other (one document per ok video,
  per-video counts equal the rows, sentence lists and similarity matrices have matching shapes);
- every shard format: sizes.json names exactly the tars there with their true sample counts, every
  document it must hold is exactly one sample, every image decodes (PIL), mmc4's image_base64 decodes,
  native's keyframe members are exactly the frames rows of the video, cosmo's mp4 opens and its clip list
  parses; formats that must hold the same documents hold as many samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cosmo_data.corpus.query import QueryError, connect, table_files
from cosmo_data.corpus.validate_shards import check_format
from cosmo_data.corpus.validation_report import TableFacts, ValidationReport, ids, plural
from cosmo_data.schemas.corpus_layout import STATE_DIR
from cosmo_data.schemas.tables import TABLES
from cosmo_data.storage import AnyPath, StorageError, location, open_binary
from cosmo_data.storage.corpus_state import finish_pending_rewrite

# ---- build state ------------------------------------------------------------------------------------


def _read_run(out: Path, report: ValidationReport) -> dict[str, Any]:
    run_file = out / STATE_DIR / "run.json"
    try:
        return json.loads(run_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.problem(f"{STATE_DIR}/run.json is missing: this folder was not written by `cosmo-data build`")
    except (OSError, ValueError) as exc:
        report.problem(f"{STATE_DIR}/run.json cannot be read: {exc}")
    return {}


def _expected_formats(out: Path, run: dict[str, Any]) -> list[str]:
    configured = run.get("config", {}).get("output", {}).get("formats")
    present = sorted(p.name for p in (out / "shards").iterdir() if p.is_dir()) if (out / "shards").is_dir() else []
    if configured is None:
        return present
    return list(configured) + [fmt for fmt in present if fmt not in configured]


def check_groups(out: Path, run: dict[str, Any], formats: list[str], report: ValidationReport) -> set[str]:
    """Done markers against the sources, and every group's files against its marker; returns done groups."""
    markers_dir = out / STATE_DIR / "groups"
    done = {p.stem for p in markers_dir.glob("*.json") if p.stem.isdigit()} if markers_dir.is_dir() else set()
    report.counts["groups"] = len(done)
    sources = run.get("sources")
    per_group = run.get("config", {}).get("output", {}).get("videos_per_shard")
    if isinstance(sources, int) and isinstance(per_group, int) and per_group > 0:
        expected = {f"{g:06d}" for g in range(math.ceil(sources / per_group))}
        unfinished = expected - done
        if unfinished:
            report.problem(
                f"build incomplete: {plural(len(unfinished), 'group')} of {len(expected)} not finished "
                f"({ids(unfinished)}); rerun `cosmo-data build` with the same --out to finish"
            )
    for group in sorted(done):
        wanted = [Path(table) / f"part-{group}.parquet" for table in TABLES]
        wanted += [Path("shards") / fmt / f"{group}.tar" for fmt in formats]
        missing = [str(path) for path in wanted if not (out / path).is_file()]
        if missing:
            report.problem(f"group {group} is marked done but lacks {ids(missing)}")
    stray = [
        str(p.relative_to(out))
        for table in TABLES
        for p in table_files(out, table)
        if p.stem.removeprefix("part-") not in done
    ]
    stray += [
        str(p.relative_to(out))
        for fmt in formats
        for p in sorted((out / "shards" / fmt).glob("*.tar"))
        if p.stem not in done
    ]
    stray += [str(p.relative_to(out)) for p in sorted(out.rglob(".tmp-*"))]
    if stray:
        report.problem(f"files outside any finished group (left by an interrupted build?): {ids(stray)}")
    return done


# ---- tables -----------------------------------------------------------------------------------------


def _schema_difference(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    differences = []
    for wanted in expected:
        if wanted.name not in actual.names:
            differences.append(f"column {wanted.name} missing")
            continue
        found = actual.field(wanted.name)
        if not found.type.equals(wanted.type):
            differences.append(f"column {wanted.name} is {found.type}, expected {wanted.type}")
        elif found.nullable != wanted.nullable:
            differences.append(
                f"column {wanted.name} is {'nullable' if found.nullable else 'required'}, "
                f"expected {'nullable' if wanted.nullable else 'required'}"
            )
    differences += [f"unexpected column {name}" for name in actual.names if name not in expected.names]
    return differences


def check_table_files(out: Path, report: ValidationReport) -> bool:
    """Every part file's schema; returns whether all tables can be queried together."""
    readable = True
    for table, schema in TABLES.items():
        for part in table_files(out, table):
            name = part.relative_to(out)
            try:
                with open_binary(part) as handle:
                    metadata = pq.read_metadata(handle)
            except (OSError, pa.ArrowException) as exc:
                report.problem(f"{name} is not readable Parquet: {exc}")
                readable = False
                continue
            differences = _schema_difference(metadata.schema.to_arrow_schema(), schema)
            if differences:
                report.problem(f"{name} does not match the {table} schema: {'; '.join(differences)}")
                readable = False
    return readable


# Each query returns (id, detail) rows that are problems; the message is built from the ids.
CONSISTENCY_CHECKS: list[tuple[str, str]] = [
    (
        "video_id appears more than once in videos",
        "SELECT video_id, count(*) FROM videos GROUP BY video_id HAVING count(*) > 1",
    ),
    (
        "doc_id appears more than once in documents",
        "SELECT doc_id, count(*) FROM documents GROUP BY doc_id HAVING count(*) > 1",
    ),
    (
        "ok videos without a document",
        "SELECT video_id, NULL FROM videos WHERE status = 'ok' AND video_id NOT IN (SELECT video_id FROM documents)",
    ),
    (
        "documents whose video is not an ok video",
        # A document that curation filtered keeps its row (status "filtered") beside its video's.
        "SELECT doc_id, NULL FROM documents WHERE coalesce(status, 'ok') = 'ok' "
        "AND video_id NOT IN (SELECT video_id FROM videos WHERE status = 'ok')",
    ),
    ("documents whose doc_id differs from video_id", "SELECT doc_id, video_id FROM documents WHERE doc_id <> video_id"),
    (
        "documents whose sentence lists differ in length",
        "SELECT doc_id, NULL FROM documents WHERE len(sentence_start_s) <> len(text_list) "
        "OR len(sentence_end_s) <> len(text_list) OR len(sentence_source) <> len(text_list)",
    ),
    (
        "documents whose similarity_matrix is not images x sentences",
        "SELECT doc_id, NULL FROM documents WHERE len(similarity_matrix) <> len(image_info) "
        "OR EXISTS (SELECT 1 FROM unnest(similarity_matrix) AS r(row) WHERE len(row) <> len(text_list))",
    ),
    (
        "documents with an image matched to a sentence that does not exist",
        "SELECT doc_id, NULL FROM documents WHERE EXISTS (SELECT 1 FROM unnest(image_info) AS i(info) "
        "WHERE info.matched_text_index < 0 OR info.matched_text_index >= len(text_list))",
    ),
    (
        "ok videos whose n_clips differs from their clips rows",
        "SELECT v.video_id, NULL FROM videos v LEFT JOIN (SELECT video_id, count(*) AS n FROM clips GROUP BY ALL) c "
        "USING (video_id) WHERE v.status = 'ok' AND v.n_clips <> coalesce(c.n, 0)",
    ),
    (
        "ok videos whose n_frames differs from their frames rows",
        "SELECT v.video_id, NULL FROM videos v LEFT JOIN (SELECT video_id, count(*) AS n FROM frames GROUP BY ALL) f "
        "USING (video_id) WHERE v.status = 'ok' AND v.n_frames <> coalesce(f.n, 0)",
    ),
    (
        "ok videos whose n_segments differs from their transcripts rows",
        "SELECT v.video_id, NULL FROM videos v LEFT JOIN (SELECT video_id, count(*) AS n FROM transcripts "
        "GROUP BY ALL) t USING (video_id) WHERE v.status = 'ok' AND v.n_segments <> coalesce(t.n, 0)",
    ),
]


# Which documents each format must hold: every document in every format (the writer fails a record
# that any format cannot hold, so the formats always agree).
EXPECTED_SAMPLES: dict[str, str] = {
    fmt: "SELECT doc_id FROM documents WHERE coalesce(status, 'ok') = 'ok'" for fmt in ("native", "mmc4", "cosmo")
}


def check_tables(out: Path, report: ValidationReport) -> TableFacts | None:
    """Cross-table consistency through DuckDB; None when the tables cannot be queried."""
    try:
        connection = connect(out)
    except QueryError as exc:
        report.problem(str(exc))
        return None
    try:
        for description, sql in CONSISTENCY_CHECKS:
            rows = connection.execute(sql).fetchall()
            if rows:
                report.problem(f"{plural(len(rows), 'case')} of {description}: {ids(str(r[0]) for r in rows)}")
        report.counts["videos"] = connection.execute("SELECT count(*) FROM videos").fetchone()[0]
        report.counts["videos_ok"] = connection.execute("SELECT count(*) FROM videos WHERE status = 'ok'").fetchone()[0]
        doc_ids = {row[0] for row in connection.execute("SELECT doc_id FROM documents").fetchall()}
        expected = {
            fmt: {row[0] for row in connection.execute(sql).fetchall()} for fmt, sql in EXPECTED_SAMPLES.items()
        }
        frame_indices = {
            video_id: set(indices)
            for video_id, indices in connection.execute(
                "SELECT video_id, list(frame_idx) FROM frames WHERE coalesce(status, 'ok') = 'ok' GROUP BY video_id"
            ).fetchall()
        }
    except duckdb.Error as exc:
        report.problem(f"tables cannot be queried together: {exc}")
        return None
    finally:
        connection.close()
    report.counts["documents"] = len(doc_ids)
    return TableFacts(doc_ids, expected, frame_indices)


# ---- shards -----------------------------------------------------------------------------------------


def validate(out: AnyPath | str) -> ValidationReport:
    """Check a corpus in a folder or on object storage (s3://bucket/prefix)."""
    out = location(out)
    report = ValidationReport(out)
    try:
        if not out.is_dir():
            report.problem(f"{out} is not a directory")
            return report
        finish_pending_rewrite(out)  # a filter killed while switching: what every reader sees next
    except StorageError as exc:
        report.problem(str(exc))
        return report
    run = _read_run(out, report)
    formats = _expected_formats(out, run)
    check_groups(out, run, formats, report)
    facts = check_tables(out, report) if check_table_files(out, report) else None
    per_format = {fmt: sum(check_format(out, fmt, facts, report).values()) for fmt in formats}
    check_counts_agree(per_format, facts, report)
    return report


def check_counts_agree(per_format: dict[str, int], facts: TableFacts | None, report: ValidationReport) -> None:
    """Formats that must hold the same documents hold as many samples (all of them, when the tables are
    unreadable)."""
    alike: dict[frozenset[str], list[str]] = {}
    for fmt in per_format:
        expected = frozenset(facts.expected.get(fmt, facts.doc_ids)) if facts else frozenset()
        alike.setdefault(expected, []).append(fmt)
    for fmts in alike.values():
        if len({per_format[fmt] for fmt in fmts}) > 1:
            counts = ", ".join(f"{fmt} {per_format[fmt]}" for fmt in fmts)
            report.problem(f"sample counts differ across formats that should hold the same documents: {counts}")
