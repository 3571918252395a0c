"""Corpus statistics, computed by DuckDB over the Parquet views of a build (see query.connect).

Video-level numbers (hours, clips, languages) count ok videos only; time per stage and failures
count every video, since failed videos cost time too. An ok video with an error is one whose decoding
stopped early (a truncated or damaged file): it keeps what decoded, and the error says where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from cosmo_data.corpus.query import QueryError, connect, parquet_scan, table_files
from cosmo_data.schemas.tables import TABLES
from cosmo_data.stages.rules import RULES

SENTENCE_SOURCES = ("caption", "asr")
# Each curation signal's distribution over every row (filtered ones too: what a threshold would cut).
QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)
QUANTILE_NAMES = tuple(f"q{round(q * 100)}" for q in QUANTILES)
SIGNALS: tuple[tuple[str, str], ...] = (
    ("clips.duration_s", "SELECT end_s - start_s FROM clips"),
    ("clips.motion", "SELECT motion FROM clips"),
    ("clips.brightness", "SELECT brightness FROM clips"),
    ("clips.sharpness", "SELECT sharpness FROM clips"),
    ("clips.frozen_fraction", "SELECT frozen_fraction FROM clips"),
    ("frames.min_side_px", "SELECT least(width, height) FROM frames"),
    ("frames.aesthetic", "SELECT aesthetic FROM frames"),
    ("frames.nsfw", "SELECT nsfw FROM frames"),
    ("frames.matched_sim", "SELECT info.matched_sim FROM (SELECT unnest(image_info) AS info FROM documents)"),
    ("videos.motion", "SELECT motion FROM videos"),
    ("videos.audio_dbfs", "SELECT audio_dbfs FROM videos"),
    ("videos.language_probability", "SELECT language_probability FROM videos"),
    ("videos.no_speech_prob", "SELECT no_speech_prob FROM videos"),
    ("videos.avg_logprob", "SELECT avg_logprob FROM videos"),
    ("videos.words_per_s", "SELECT words_per_s FROM videos"),
)
FUNNEL_TABLES = ("videos", "clips", "frames", "documents")


def _one(connection: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return connection.execute(sql).fetchone()[0]


def _pairs(connection: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    return {str(key): value for key, value in connection.execute(sql).fetchall()}


def _map_totals(connection: duckdb.DuckDBPyConnection, column: str) -> list[tuple[str, float, float, int]]:
    """(key, sum, mean, videos having the key) over the entries of a MAP column of videos."""
    return connection.execute(
        f"""
        WITH entries AS (
            SELECT unnest(map_keys({column})) AS key, unnest(map_values({column})) AS value FROM videos
        )
        SELECT key, sum(value), avg(value), count(*) FROM entries GROUP BY key ORDER BY sum(value) DESC, key
        """
    ).fetchall()


def _counter_total(connection: duckdb.DuckDBPyConnection, view: str, key: str) -> int:
    """The sum of one counter over a view of videos."""
    return _one(
        connection,
        f"""
        SELECT coalesce(sum(value), 0) FROM (
            SELECT unnest(map_keys(counters)) AS key, unnest(map_values(counters)) AS value FROM {view}
        ) WHERE key = '{key}'
        """,
    )


def compute_stats(out: Path) -> dict[str, Any]:
    """Every number of the stats report; averages are None when there is nothing to average."""
    connection = connect(out)
    try:
        _add_missing_columns(connection, out)
        return _compute(connection)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    finally:
        connection.close()


def _add_missing_columns(connection: duckdb.DuckDBPyConnection, out: Path) -> None:
    """A corpus built before a column existed (the curation columns) reads as if it held nulls there."""
    types = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int32(): "INTEGER", pa.int64(): "BIGINT"}
    for table, schema in TABLES.items():
        files = table_files(out, table)
        if not files:
            continue
        have = {row[0] for row in connection.execute(f"DESCRIBE {table}").fetchall()}
        missing = [f"NULL::{types[f.type]} AS {f.name}" for f in schema if f.name not in have and f.type in types]
        if missing:
            connection.execute(
                f"CREATE OR REPLACE VIEW {table} AS SELECT *, {', '.join(missing)} FROM {parquet_scan(files)}"
            )


def signal_quantiles(connection: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    """Per signal: how many rows have it and its QUANTILES (None where no row has it)."""
    result = {}
    for name, sql in SIGNALS:
        n, values = connection.execute(
            f"SELECT count(x), quantile_cont(x, {list(QUANTILES)}) FROM ({sql}) AS s(x) WHERE x IS NOT NULL"
        ).fetchone()
        result[name] = {"n": n, "quantiles": dict(zip(QUANTILE_NAMES, values)) if n else None}
    return result


def funnel(connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Rows each curation rule removed, per table, in the order the rules run, as MMC4's paper reports its
    filtering: a clip, keyframe or document goes with the rule that filtered it, or else with the rule that
    filtered its video; "(other filters)": filters that name no rule (the stages' own filters name theirs:
    document_no_sentences, assign_min_images, ...). Over the videos that decoded (failures before curation are in "Failures by status"), so decoded = removed + kept."""
    removed: dict[str, dict[str, int]] = {}
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for table in FUNNEL_TABLES:
        own = "NULL" if table == "videos" else "CASE WHEN coalesce(t.status, 'ok') <> 'ok' THEN t.filter_reason END"
        own_other = "false" if table == "videos" else "coalesce(t.status, 'ok') <> 'ok'"
        join = "videos t" if table == "videos" else f"{table} t JOIN videos v USING (video_id)"
        video = "t" if table == "videos" else "v"
        rows = connection.execute(
            f"""
            SELECT CASE
                WHEN {own_other} THEN coalesce({own}, '(other filters)')
                WHEN {video}.status = 'filtered' THEN coalesce({video}.filter_reason, '(other filters)')
            END AS reason, count(*)
            FROM {join} WHERE {video}.status IN ('ok', 'filtered') GROUP BY ALL
            """
        ).fetchall()
        before[table] = sum(n for _, n in rows)
        after[table] = sum(n for reason, n in rows if reason is None)
        for reason, n in rows:
            if reason is not None:
                removed.setdefault(reason, dict.fromkeys(FUNNEL_TABLES, 0))[table] = n
    order = [rule for rule in RULES if rule in removed] + sorted(set(removed) - set(RULES))
    return {"before": before, "steps": {rule: removed[rule] for rule in order}, "after": after}


def _compute(connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    connection.execute("CREATE TEMP VIEW ok_videos AS SELECT * FROM videos WHERE status = 'ok'")
    connection.execute(
        "CREATE TEMP VIEW ok_clips AS SELECT c.* FROM clips c JOIN ok_videos v USING (video_id) "
        "WHERE coalesce(c.status, 'ok') = 'ok'"
    )
    # A document curation filtered keeps its row; the samples are the ok ones.
    connection.execute("CREATE TEMP VIEW ok_documents AS SELECT * FROM documents WHERE coalesce(status, 'ok') = 'ok'")
    videos_ok = _one(connection, "SELECT count(*) FROM ok_videos")
    documents = _one(connection, "SELECT count(*) FROM ok_documents")
    sentences = _one(connection, "SELECT coalesce(sum(len(text_list)), 0) FROM ok_documents")
    images = _one(connection, "SELECT coalesce(sum(len(image_info)), 0) FROM ok_documents")
    by_source = _pairs(
        connection,
        "SELECT source, count(*) FROM (SELECT unnest(sentence_source) AS source FROM ok_documents) GROUP BY source",
    )
    clips = _one(connection, "SELECT count(*) FROM ok_clips")
    stats: dict[str, Any] = {
        "samples": documents,
        "videos_total": _one(connection, "SELECT count(*) FROM videos"),
        "videos_ok": videos_ok,
        "videos_failed": _one(connection, "SELECT count(*) FROM videos WHERE status <> 'ok'"),
        "videos_ok_with_decode_error": _one(connection, "SELECT count(*) FROM ok_videos WHERE error IS NOT NULL"),
        "failures": _pairs(
            connection,
            "SELECT status, count(*) AS n FROM videos WHERE status <> 'ok' GROUP BY status ORDER BY n DESC, status",
        ),
        "hours_of_video": _one(connection, "SELECT coalesce(sum(duration_s), 0) / 3600.0 FROM ok_videos"),
        "clips": clips,
        "avg_clips": clips / videos_ok if videos_ok else None,
        "avg_clip_length_s": _one(connection, "SELECT avg(end_s - start_s) FROM ok_clips"),
        "keyframes": _one(
            connection,
            "SELECT count(*) FROM frames f JOIN ok_videos v USING (video_id) WHERE coalesce(f.status, 'ok') = 'ok'",
        ),
        # Keyframes the clips should have had (keyframes.per_clip, max_per_video) that the pool lacked.
        "keyframe_shortfall": int(_counter_total(connection, "ok_videos", "dropped_keyframe_shortfall")),
        "avg_document_tokens": _one(connection, "SELECT avg(n_tokens) FROM ok_documents"),
        "images": images,
        "avg_images_per_document": images / documents if documents else None,
        "sentences": sentences,
        "avg_sentences_per_document": sentences / documents if documents else None,
        "avg_sentences_per_document_by_source": {
            source: (by_source.get(source, 0) / documents if documents else None)
            for source in sorted(set(SENTENCE_SOURCES) | set(by_source))
        },
        "mean_matched_similarity": _one(
            connection,
            "SELECT avg(info.matched_sim) FROM (SELECT unnest(image_info) AS info FROM ok_documents)",
        ),
        # Where each ok video's transcript came from (stages/captions.py); corpora built before
        # transcripts.text_source had whisper's only.
        "text_sources": _pairs(
            connection,
            "SELECT coalesce(t.text_source, 'whisper') AS text_source, count(DISTINCT t.video_id) AS n "
            "FROM transcripts t JOIN ok_videos v USING (video_id) GROUP BY ALL ORDER BY n DESC, text_source",
        ),
        "languages": _pairs(
            connection,
            "SELECT coalesce(language, 'unknown') AS language, count(*) AS n FROM ok_videos "
            "GROUP BY ALL ORDER BY n DESC, language",
        ),
        "stage_seconds": {
            stage: {"total": total, "mean": mean, "videos": videos}
            for stage, total, mean, videos in _map_totals(connection, "timings")
        },
        "dropped": {key: int(total) for key, total, _, _ in _map_totals(connection, "counters")},
        # Clips of ok videos per narration outcome (stages/narrate.py); empty where narration was off.
        "narration": _pairs(
            connection,
            "SELECT narration_status, count(*) AS n FROM ok_clips WHERE narration_status IS NOT NULL "
            "GROUP BY ALL ORDER BY n DESC, narration_status",
        ),
        "signals": signal_quantiles(connection),
        "funnel": funnel(connection),
    }
    return stats


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _section(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> list[str]:
    """A titled block of rows: first column left-aligned, numbers right-aligned."""
    lines = [title]
    if not rows:
        return lines + ["  (none)"]
    table = ([header] if header else []) + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def format_stats(stats: dict[str, Any]) -> str:
    """The stats as an aligned plain-text report."""
    by_source = stats["avg_sentences_per_document_by_source"]
    corpus_rows = [
        ("samples (documents)", _number(stats["samples"])),
        ("videos ok", _number(stats["videos_ok"])),
        ("  decoding stopped early", _number(stats["videos_ok_with_decode_error"])),
        ("videos failed", _number(stats["videos_failed"])),
        ("hours of video (ok)", _number(stats["hours_of_video"], 3)),
        ("clips (ok videos)", _number(stats["clips"])),
        ("clips per video", _number(stats["avg_clips"])),
        ("clip length (s)", _number(stats["avg_clip_length_s"])),
        ("keyframes (ok videos)", _number(stats["keyframes"])),
        ("  short of the budget", _number(stats["keyframe_shortfall"])),
        ("images per document", _number(stats["avg_images_per_document"])),
        ("sentences per document", _number(stats["avg_sentences_per_document"])),
    ]
    corpus_rows += [(f"  from {source}", _number(value)) for source, value in by_source.items()]
    corpus_rows += [
        ("tokens per document", _number(stats["avg_document_tokens"], 1)),
        ("mean matched similarity", _number(stats["mean_matched_similarity"], 4)),
    ]
    lines = _section("Corpus", corpus_rows)
    lines += [""] + _section("Failures by status", [(k, _number(v)) for k, v in stats["failures"].items()])
    lines += [""] + _section(
        "Transcript sources (ok videos)", [(k, _number(v)) for k, v in stats["text_sources"].items()]
    )
    lines += [""] + _section("Languages (ok videos)", [(k, _number(v)) for k, v in stats["languages"].items()])
    stage_rows = [
        (stage, _number(t["total"]), _number(t["mean"]), _number(t["videos"]))
        for stage, t in stats["stage_seconds"].items()
    ]
    lines += [""] + _section("Time per stage", stage_rows, header=("stage", "total s", "mean s", "videos"))
    lines += [""] + _section("Dropped by filters", [(k, _number(v)) for k, v in stats["dropped"].items()])
    narration_rows = [(k, _number(v)) for k, v in stats["narration"].items()]
    lines += [""] + _section("Narration (clips of ok videos by outcome)", narration_rows)
    lines += [""] + format_funnel(stats["funnel"])
    signal_rows = [
        (name, _number(s["n"]), *(_number(s["quantiles"][q], 3) if s["quantiles"] else "-" for q in QUANTILE_NAMES))
        for name, s in stats["signals"].items()
    ]
    header = ("signal", "rows", *QUANTILE_NAMES)
    lines += [""] + _section("Curation signals (all rows; quantiles)", signal_rows, header=header)
    return "\n".join(lines)


def format_funnel(funnel: dict[str, Any]) -> list[str]:
    """The funnel as MMC4's paper reports its filtering: rows in, each rule's removals in order, rows left."""
    rows = [("decoded", *(_number(funnel["before"][t]) for t in FUNNEL_TABLES))]
    rows += [(f"- {rule}", *(_number(n[t]) for t in FUNNEL_TABLES)) for rule, n in funnel["steps"].items()]
    rows += [("kept", *(_number(funnel["after"][t]) for t in FUNNEL_TABLES))]
    return _section("Curation funnel (rows each rule removed, in order)", rows, header=("", *FUNNEL_TABLES))
