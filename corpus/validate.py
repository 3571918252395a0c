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

import base64
import binascii
import io
import json
import math
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cosmo_data.corpus.query import QueryError, connect, table_files
from cosmo_data.schemas.tables import TABLES

STATE_DIR = "_state"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Ids listed in one message before "(+N more)".
IDS_SHOWN = 5
# Problems printed by format_report; the report object keeps them all.
PROBLEMS_SHOWN = 50


@dataclass
class ValidationReport:
    out: Path
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def _ids(values: Any) -> str:
    """Sorted values (all str or all int), the first few of them."""
    values = [str(v) for v in sorted(values)]
    shown = ", ".join(values[:IDS_SHOWN])
    return shown + (f" (+{len(values) - IDS_SHOWN} more)" if len(values) > IDS_SHOWN else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


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
                f"build incomplete: {_plural(len(unfinished), 'group')} of {len(expected)} not finished "
                f"({_ids(unfinished)}); rerun `cosmo-data build` with the same --out to finish"
            )
    for group in sorted(done):
        wanted = [Path(table) / f"part-{group}.parquet" for table in TABLES]
        wanted += [Path("shards") / fmt / f"{group}.tar" for fmt in formats]
        missing = [str(path) for path in wanted if not (out / path).is_file()]
        if missing:
            report.problem(f"group {group} is marked done but lacks {_ids(missing)}")
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
        report.problem(f"files outside any finished group (left by an interrupted build?): {_ids(stray)}")
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
                metadata = pq.read_metadata(part)
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
        "SELECT doc_id, NULL FROM documents WHERE video_id NOT IN (SELECT video_id FROM videos WHERE status = 'ok')",
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
EXPECTED_SAMPLES: dict[str, str] = {fmt: "SELECT doc_id FROM documents" for fmt in ("native", "mmc4", "cosmo")}


@dataclass
class TableFacts:
    """What the shard checks need from the tables."""

    doc_ids: set[str]
    expected: dict[str, set[str]]  # format -> doc_ids it must hold
    frame_indices: dict[str, set[int]]  # video_id -> frames.frame_idx


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
                report.problem(f"{_plural(len(rows), 'case')} of {description}: {_ids(str(r[0]) for r in rows)}")
        report.counts["videos"] = connection.execute("SELECT count(*) FROM videos").fetchone()[0]
        report.counts["videos_ok"] = connection.execute("SELECT count(*) FROM videos WHERE status = 'ok'").fetchone()[0]
        doc_ids = {row[0] for row in connection.execute("SELECT doc_id FROM documents").fetchall()}
        expected = {
            fmt: {row[0] for row in connection.execute(sql).fetchall()} for fmt, sql in EXPECTED_SAMPLES.items()
        }
        frame_indices = {
            video_id: set(indices)
            for video_id, indices in connection.execute(
                "SELECT video_id, list(frame_idx) FROM frames GROUP BY video_id"
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


def split_member(name: str) -> tuple[str, str]:
    """webdataset's split: the key is the basename up to its first dot, the rest is the extension."""
    directory, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{directory}/{key}" if directory else key), ext


def iter_samples(tar_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per run of consecutive members sharing a key, in tar order."""
    key: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, ext = split_member(member.name)
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            members[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, members


def decode_problem(data: bytes) -> str | None:
    """None when the bytes decode as an image, else PIL's reason."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for bad data; each is a finding, not a crash
        return f"{type(exc).__name__}: {exc}"
    return None


def _json_member(members: dict[str, bytes], where: str, report: ValidationReport) -> dict[str, Any] | None:
    if "json" not in members:
        report.problem(f"{where}: no .json member")
        return None
    try:
        value = json.loads(members["json"])
    except ValueError as exc:
        report.problem(f"{where}: .json does not parse: {exc}")
        return None
    if not isinstance(value, dict):
        report.problem(f"{where}: .json is not an object")
        return None
    return value


def check_native_sample(
    key: str, members: dict[str, bytes], where: str, facts: TableFacts | None, report: ValidationReport
) -> None:
    meta = _json_member(members, where, report)
    if meta is None:
        return
    if meta.get("doc_id") != key:
        report.problem(f"{where}: json doc_id {meta.get('doc_id')!r} differs from the member key")
    named = {entry.get("image_name") for entry in meta.get("frames", []) + meta.get("image_info", [])}
    absent = {str(name) for name in named if name not in members}
    if absent:
        report.problem(f"{where}: json names images that are not members: {_ids(absent)}")
    if facts is None:
        return
    indices = {
        int(ext.partition(".")[0]) for ext in members if ext.endswith(".jpg") and ext.partition(".")[0].isdigit()
    }
    expected = facts.frame_indices.get(str(meta.get("video_id", key)), set())
    if indices != expected:
        missing, extra = sorted(expected - indices), sorted(indices - expected)
        parts = ([f"no image for frame_idx {_ids(missing)}"] if missing else []) + (
            [f"images for frame_idx {_ids(extra)} that the frames table lacks"] if extra else []
        )
        report.problem(f"{where}: keyframe members do not match the frames table: {'; '.join(parts)}")


def check_mmc4_sample(key: str, members: dict[str, bytes], where: str, report: ValidationReport) -> None:
    document = _json_member(members, where, report)
    if document is None:
        return
    texts = document.get("text_list")
    infos = document.get("image_info")
    if not isinstance(texts, list) or not isinstance(infos, list):
        report.problem(f"{where}: json lacks text_list or image_info lists")
        return
    for position, info in enumerate(infos):
        label = f"{where}: image_info[{position}]"
        index = info.get("matched_text_index")
        if not isinstance(index, int) or not 0 <= index < len(texts):
            report.problem(f"{label} matched_text_index {index!r} is not a sentence index (0..{len(texts) - 1})")
        encoded = info.get("image_base64")
        if not isinstance(encoded, str) or not encoded:
            report.problem(f"{label} has no image_base64")
            continue
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            report.problem(f"{label} image_base64 is not base64: {exc}")
            continue
        reason = decode_problem(data)
        report.add("images_decoded")
        if reason:
            report.problem(f"{label} image_base64 does not decode as an image: {reason}")
    matrix = document.get("similarity_matrix")
    if (
        not isinstance(matrix, list)
        or len(matrix) != len(infos)
        or any(not isinstance(row, list) or len(row) != len(texts) for row in matrix)
    ):
        report.problem(f"{where}: similarity_matrix is not {len(infos)} images x {len(texts)} sentences")


CLIP_SPAN = re.compile(r"^\d+:\d\d:\d\d - \d+:\d\d:\d\d$")


def check_cosmo_sample(key: str, members: dict[str, bytes], where: str, report: ValidationReport) -> None:
    """COSMO's loader reads `json["clips"]`, itself a JSON string of [{clip: "H:MM:SS - H:MM:SS", caption}],
    and the mp4."""
    meta = _json_member(members, where, report)
    if meta is not None:
        try:
            clips = json.loads(meta.get("clips", ""))
        except (TypeError, ValueError):
            clips = None
        if (
            not isinstance(clips, list)
            or not clips
            or not all(
                isinstance(c, dict) and CLIP_SPAN.match(str(c.get("clip", ""))) and isinstance(c.get("caption"), str)
                for c in clips
            )
        ):
            report.problem(f'{where}: json "clips" is not a JSON list of {{"clip": "H:MM:SS - H:MM:SS", "caption"}}')
    if "mp4" not in members:
        report.problem(f"{where}: no .mp4 member")
        return
    try:
        with av.open(io.BytesIO(members["mp4"])) as container:
            if not container.streams.video:
                report.problem(f"{where}.mp4 has no video stream")
    except av.FFmpegError as exc:
        report.problem(f"{where}.mp4 does not open: {exc}")


def _read_sizes(shard_dir: Path, fmt: str, report: ValidationReport) -> dict[str, int] | None:
    sizes_file = shard_dir / "sizes.json"
    try:
        sizes = json.loads(sizes_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.problem(f"shards/{fmt}/sizes.json is missing")
        return None
    except (OSError, ValueError) as exc:
        report.problem(f"shards/{fmt}/sizes.json cannot be read: {exc}")
        return None
    if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
        report.problem(f"shards/{fmt}/sizes.json is not an object of tar name -> sample count")
        return None
    return sizes


def check_format(out: Path, fmt: str, facts: TableFacts | None, report: ValidationReport) -> Counter[str]:
    """One format's tars and sizes.json; returns how many samples each key has in the format."""
    shard_dir = out / "shards" / fmt
    keys: Counter[str] = Counter()
    if not shard_dir.is_dir():
        report.problem(f"shards/{fmt} is missing although the build was configured to write {fmt}")
        return keys
    actual: dict[str, int] = {}
    for tar_path in sorted(shard_dir.glob("*.tar")):
        count = 0
        try:
            for key, members in iter_samples(tar_path):
                count += 1
                keys[key] += 1
                where = f"shards/{fmt}/{tar_path.name}: {key}"
                for ext, data in members.items():
                    if ext.rpartition(".")[2].lower() in IMAGE_EXTENSIONS:
                        reason = decode_problem(data)
                        report.add("images_decoded")
                        if reason:
                            report.problem(f"{where}.{ext} does not decode as an image: {reason}")
                if fmt == "native":
                    check_native_sample(key, members, where, facts, report)
                elif fmt == "mmc4":
                    check_mmc4_sample(key, members, where, report)
                elif fmt == "cosmo":
                    check_cosmo_sample(key, members, where, report)
        except (tarfile.TarError, OSError, EOFError) as exc:
            report.problem(f"shards/{fmt}/{tar_path.name} is not a readable tar: {exc}")
        actual[tar_path.name] = count
    report.counts[f"samples.{fmt}"] = sum(actual.values())
    sizes = _read_sizes(shard_dir, fmt, report)
    if sizes is not None:
        for name in sorted(set(sizes) - set(actual)):
            report.problem(f"shards/{fmt}/sizes.json lists {name}, which does not exist")
        for name in sorted(set(actual) - set(sizes)):
            report.problem(f"shards/{fmt}/{name} is not listed in sizes.json")
        for name in sorted(set(sizes) & set(actual)):
            if sizes[name] != actual[name]:
                report.problem(
                    f"shards/{fmt}/sizes.json says {name} holds {sizes[name]} samples; it holds {actual[name]}"
                )
    duplicated = [key for key, n in keys.items() if n > 1]
    if duplicated:
        verb = "appears" if len(duplicated) == 1 else "appear"
        report.problem(
            f"{fmt}: {_plural(len(duplicated), 'document')} {verb} in more than one sample: {_ids(duplicated)}"
        )
    if facts is not None:
        missing = facts.expected.get(fmt, facts.doc_ids) - set(keys)
        extra = set(keys) - facts.doc_ids
        if missing:
            report.problem(f"{fmt}: {_plural(len(missing), 'document')} missing from the shards: {_ids(missing)}")
        if extra:
            report.problem(f"{fmt}: {_plural(len(extra), 'sample')} with no row in documents: {_ids(extra)}")
    return keys


def validate(out: Path) -> ValidationReport:
    out = Path(out)
    report = ValidationReport(out)
    if not out.is_dir():
        report.problem(f"{out} is not a directory")
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


def format_report(report: ValidationReport) -> str:
    counts = report.counts
    facts = [
        f"{counts.get('groups', 0)} groups",
        f"{counts.get('videos', 0)} videos ({counts.get('videos_ok', 0)} ok)",
        f"{counts.get('documents', 0)} documents",
    ]
    facts += [
        f"{name.removeprefix('samples.')} {n} samples" for name, n in counts.items() if name.startswith("samples.")
    ]
    facts.append(f"{counts.get('images_decoded', 0)} images decoded")
    verdict = "valid" if report.ok else f"INVALID: {_plural(len(report.problems), 'problem')}"
    lines = [f"{report.out}: {verdict}", "  " + " · ".join(facts)]
    lines += [f"  - {problem}" for problem in report.problems[:PROBLEMS_SHOWN]]
    if len(report.problems) > PROBLEMS_SHOWN:
        lines.append(f"  … and {len(report.problems) - PROBLEMS_SHOWN} more problems")
    return "\n".join(lines)
