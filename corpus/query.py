"""SQL over a built corpus: one DuckDB view per Parquet table, read in place.

Views list the part files found when connecting, so a corpus whose path holds glob characters
still reads, and a table with no part files becomes an empty view with the schema's columns:
queries written against the schema keep working on an empty or partial build. A corpus on object
storage (s3://...) is read in place too, through the project's filesystem registered with DuckDB.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import duckdb

from cosmo_data.schemas.tables import TABLES
from cosmo_data.storage import AnyPath, RemotePath, StorageError, duckdb_filesystem, location
from cosmo_data.storage.corpus_state import finish_pending_rewrite

OutputFormat = Literal["table", "csv", "json"]
OUTPUT_FORMATS: tuple[str, ...] = ("table", "csv", "json")
# Cells longer than this are cut in the aligned text table (csv and json keep everything).
TABLE_CELL_CHARS = 60


class QueryError(Exception):
    """A query or corpus that cannot be read; the message is DuckDB's own when DuckDB refused."""


def table_files(out: AnyPath | str, table: str) -> list[AnyPath]:
    """The Parquet part files of one table, in group order."""
    return sorted((location(out) / table).glob("part-*.parquet"))


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parquet_scan(files: list[AnyPath], *, filename: bool = False) -> str:
    """A read_parquet(...) expression over these files (listed, so no glob characters are interpreted);
    filename adds each row's file path as a column."""
    file_list = "[" + ", ".join(_sql_string(str(f)) for f in files) + "]"
    return f"read_parquet({file_list}, union_by_name = true{', filename = true' if filename else ''})"


def connect(out: AnyPath | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views videos, clips, frames, transcripts, documents."""
    try:
        return _connect(location(out))
    except StorageError as exc:
        raise QueryError(str(exc)) from None


def _connect(out: AnyPath) -> duckdb.DuckDBPyConnection:
    if not out.is_dir():
        raise QueryError(f"{out} is not a directory (expected the output folder of a build)")
    if not any((out / table).is_dir() for table in TABLES):
        raise QueryError(f"{out} is not a build output: none of {', '.join(TABLES)} is there")
    finish_pending_rewrite(out)  # a killed filter's switch: part old tables, part new until it is
    connection = duckdb.connect()
    if isinstance(out, RemotePath):
        # DuckDB's own S3 support (httpfs) is an extension it would download; ours reads the same URIs.
        connection.register_filesystem(duckdb_filesystem(out.scheme))
    for table, schema in TABLES.items():
        files = table_files(out, table)
        if files:
            connection.execute(f"CREATE VIEW {table} AS SELECT * FROM {parquet_scan(files)}")
        else:
            connection.register(table, schema.empty_table())
    return connection


def run_query(out: AnyPath | str, sql: str, fmt: OutputFormat = "table") -> str:
    """Run one SQL statement over the corpus and render its result as text (no trailing newline)."""
    if fmt not in OUTPUT_FORMATS:
        raise QueryError(f"unknown output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    connection = connect(out)
    try:
        cursor = connection.execute(sql)
        if cursor.description is None:
            return ""
        columns = [column[0] for column in cursor.description]
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    finally:
        connection.close()
    if fmt == "csv":
        return render_csv(columns, rows)
    if fmt == "json":
        return render_json(columns, rows)
    return render_table(columns, rows)


def _plain(value: Any) -> Any:
    """A JSON-compatible copy of a DuckDB value (maps are dicts, lists stay lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    return value


def render_json(columns: list[str], rows: list[tuple]) -> str:
    records = [{name: _plain(value) for name, value in zip(columns, row)} for row in rows]
    return json.dumps(records, ensure_ascii=False, indent=2, default=str)


def _text_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_plain(value), ensure_ascii=False, default=str)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    return str(value)


def render_csv(columns: list[str], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text_cell(value) for value in row])
    return buffer.getvalue().removesuffix("\n")


def _display_cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return format(value, ".6g")
    text = _text_cell(value).replace("\n", " ")
    return text if len(text) <= TABLE_CELL_CHARS else text[: TABLE_CELL_CHARS - 1] + "…"


def render_table(columns: list[str], rows: list[tuple]) -> str:
    """Aligned columns, numbers right-aligned, one header line and a row count."""
    cells = [[_display_cell(value) for value in row] for row in rows]
    numeric = [
        all(
            isinstance(row[i], (int, float, Decimal)) and not isinstance(row[i], bool)
            for row in rows
            if row[i] is not None
        )
        for i in range(len(columns))
    ]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [line(columns), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in cells]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines)
