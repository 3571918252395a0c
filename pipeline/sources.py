"""Reading sources: text files of YouTube ids / URLs / paths, CSV or Parquet tables, local video files.

Every line that is not blank or a comment becomes exactly one SourceRow; a line that is not a usable
source becomes a row with an error (recorded as status invalid_source), never an exception.
A line repeated word for word is skipped. The same video under another spelling (a YouTube id given
as an id and as a watch URL, a file by two paths) keeps a row of its own with status "duplicate" and
duplicate_of naming the first row's video_id; it is never downloaded. Source ids listed in an exclude
file (evaluation sets) keep their rows with status "excluded".
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

from cosmo_data.schemas.records import DUPLICATE, EXCLUDED
from cosmo_data.schemas.redact import redact
from cosmo_data.storage import AnyPath, RemotePath, StorageError, location

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com", "youtu.be"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg", ".wmv", ".3gp"}
# Never plausible in a source; rejected so that nothing shell-like travels further, even though
# no source ever reaches a shell (subprocesses always get argument lists).
SHELL_MARKERS = ("$(", "`", ";", "|", "&&", "\n", "\r", "\x00")


class SourceError(Exception):
    """The source file itself is unusable (missing, unreadable, no usable column)."""


@dataclass(frozen=True)
class SourceRow:
    video_id: str  # sanitized key: [A-Za-z0-9_-] only, safe for file and tar member names
    source: str  # the line as given (decoded leniently), credentials removed (schemas/redact.py)
    source_index: int
    kind: str  # "youtube", "url", "local" or "invalid"
    # What the downloader fetches: a URL (with its credentials: kept in memory, never written) or an
    # absolute path ("" when invalid).
    locator: str
    error: str | None = None
    # A row kept out of the build on purpose (DUPLICATE, EXCLUDED; error says why), else None.
    status: str | None = None
    duplicate_of: str | None = None  # a DUPLICATE's kept row's video_id

    @property
    def source_id(self) -> str:
        """What names the video whatever the spelling: the YouTube id, the URL (redacted: a re-signed link is
        the same video), or the absolute path."""
        if self.kind == "youtube":
            return self.video_id
        return redact(self.locator) if self.kind == "url" else self.locator


def slug(text: str, max_len: int = 40) -> str:
    """A readable, safe key fragment: ASCII letters, digits, '_' and '-' only."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_text).strip("_-")
    return cleaned[:max_len] or "video"


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def _youtube_id_from_url(url: str) -> str | None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host not in YOUTUBE_HOSTS:
        return None
    if host == "youtu.be":
        candidate = parts.path.lstrip("/").split("/")[0]
    elif parts.path.startswith(("/shorts/", "/embed/", "/live/")):
        candidate = parts.path.split("/")[2]
    else:
        candidate = (parse_qs(parts.query).get("v") or [""])[0]
    return candidate if YOUTUBE_ID.match(candidate) else None


def classify(value: str, index: int, base_dir: AnyPath | None = None) -> SourceRow:
    """Turn one source value into a row; never raises. A source file on object storage (base_dir remote)
    names videos by YouTube id or URL: a path in it has no machine to be on. The row's source and video_id
    are made from the value without its credentials (schemas/redact.py); only the locator keeps them."""
    text = value.strip()
    shown = redact(text)

    def invalid(reason: str) -> SourceRow:
        return _invalid_row(shown, index, f"invalid source line {index + 1}: {reason}")

    if any(marker in text for marker in SHELL_MARKERS):
        return invalid("contains shell metacharacters; expected a YouTube id, an http(s) URL or a video file path")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        return invalid("contains control characters")
    if YOUTUBE_ID.match(text):
        return SourceRow(text, text, index, "youtube", f"https://www.youtube.com/watch?v={text}")
    if text.startswith("-"):
        return invalid("starts with '-' but is not a YouTube id (options are never taken from sources)")
    lowered = text.lower()
    if lowered.startswith(("http://", "https://")):
        parts = urlsplit(text)
        if not parts.hostname or " " in text or any(ch in text for ch in "<>\"'\\{}"):
            return invalid("malformed URL")
        youtube_id = _youtube_id_from_url(text)
        if youtube_id:
            return SourceRow(youtube_id, shown, index, "youtube", f"https://www.youtube.com/watch?v={youtube_id}")
        name = PurePosixPath(parts.path).stem or parts.hostname
        return SourceRow(f"{slug(name)}-{short_hash(shown)}", shown, index, "url", text)
    if "://" in text and not lowered.startswith("file://"):
        return invalid(f"unsupported URL scheme {text.split('://', 1)[0]!r}")
    path_text = text[len("file://") :] if lowered.startswith("file://") else text
    path = Path(path_text)
    if ".." in path.parts:
        return invalid("path traversal ('..') is not allowed in source paths")
    if "/" not in path_text and path.suffix.lower() not in VIDEO_SUFFIXES:
        return invalid("not a YouTube id, an http(s) URL or a video file path")
    if isinstance(base_dir, RemotePath):
        return invalid("a source on object storage names videos by YouTube id or http(s) URL, not by file path")
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    absolute = str(path.absolute())
    return SourceRow(f"{slug(path.stem)}-{short_hash(absolute)}", text, index, "local", absolute)


def _dedupe(rows: list[SourceRow]) -> list[SourceRow]:
    """The first row of each video_id is kept (the lower source_index, whatever the order Ray later
    returns them in); another spelling of it becomes a DUPLICATE row, the same line again is skipped."""
    first: dict[str, SourceRow] = {}
    seen: set[tuple[str, str]] = set()
    unique = []
    for row in rows:
        if (row.video_id, row.source) in seen:
            continue
        seen.add((row.video_id, row.source))
        kept = first.setdefault(row.video_id, row)
        if kept is not row:
            row = replace(
                row,
                video_id=f"{kept.video_id}-{short_hash(row.source)}",
                error=f"the same video as source {kept.source!r} (video_id {kept.video_id})",
                status=DUPLICATE,
                duplicate_of=kept.video_id,
            )
        unique.append(row)
    return unique


def read_exclude_ids(path: AnyPath | str) -> set[str]:
    """Source ids to keep out (an evaluation set): a text file of YouTube ids, URLs or paths, or a CSV or
    Parquet file with a video_id or url column, read as sources are."""
    path = location(path)
    if not path.is_file():
        raise SourceError(f"exclude file {path} does not exist")
    rows = _rows_from_table(path) if path.suffix.lower() in (".csv", ".parquet") else _rows_from_text(path)
    bad = next((row for row in rows if row.error), None)
    if bad is not None:
        raise SourceError(f"exclude file {path}: {bad.error}")
    return {row.source_id for row in rows}


def _exclude(rows: list[SourceRow], excluded: set[str]) -> list[SourceRow]:
    return [
        replace(row, status=EXCLUDED, error="source id listed in the exclude ids", duplicate_of=None)
        if row.kind != "invalid" and row.source_id in excluded
        else row
        for row in rows
    ]


def _rows_from_text(path: AnyPath) -> list[SourceRow]:
    rows = []
    index = 0
    for raw in path.read_bytes().splitlines():
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8", "backslashreplace").strip()
            reason = f"invalid source line {index + 1}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
            rows.append(_invalid_row(redact(text), index, reason))
            index += 1
            continue
        stripped = line.strip().lstrip("\ufeff")
        if not stripped or stripped.startswith("#"):
            continue
        rows.append(classify(stripped, index, path.parent))
        index += 1
    return rows


def _rows_from_table(path: AnyPath) -> list[SourceRow]:
    import pandas as pd

    try:
        data = io.BytesIO(path.read_bytes()) if isinstance(path, RemotePath) else path
        frame = pd.read_parquet(data) if path.suffix.lower() == ".parquet" else pd.read_csv(data, dtype=str)
    except StorageError:
        raise
    except Exception as exc:
        raise SourceError(f"cannot read source table {path}: {exc}") from exc
    column = next((c for c in ("url", "video_id", "path") if c in frame.columns), None)
    if column is None:
        raise SourceError(
            f"source table {path} needs a 'video_id', 'url' or 'path' column; it has {list(frame.columns)}"
        )
    rows = []
    for index, value in enumerate(frame[column].tolist()):
        if value is None or (isinstance(value, float) and value != value):
            rows.append(_invalid_row("", index, f"invalid source row {index + 1}: empty {column}"))
            continue
        rows.append(classify(str(value), index, path.parent))
    return rows


def read_sources(paths: list[AnyPath | str], exclude_ids: set[str] | None = None) -> list[SourceRow]:
    """Read every source given on the command line, in order, numbering rows across them. A source on
    object storage (s3://bucket/key) is a text, CSV or Parquet file; its problems raise StorageError.
    exclude_ids: source ids (read_exclude_ids) whose rows become EXCLUDED."""
    rows: list[SourceRow] = []
    for path in paths:
        path = location(path)
        if isinstance(path, RemotePath):
            if not path.is_file():
                raise SourceError(f"source {path} does not exist ({path.missing_reason()})")
            if path.suffix.lower() in VIDEO_SUFFIXES:
                raise SourceError(f"source {path} is a video on object storage; list its URL in a text file instead")
            part = _rows_from_table(path) if path.suffix.lower() in (".csv", ".parquet") else _rows_from_text(path)
            offset = len(rows)
            rows.extend(_renumber(row, offset + row.source_index) for row in part)
            continue
        if not path.exists():
            raise SourceError(f"source {path} does not exist")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            part = [classify(str(p), i) for i, p in enumerate(found)]
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            part = [classify(str(path.absolute()), 0)]
        elif path.suffix.lower() in (".csv", ".parquet"):
            part = _rows_from_table(path)
        else:
            try:
                part = _rows_from_text(path)
            except OSError as exc:
                raise SourceError(f"cannot read source {path}: {exc.strerror or exc}") from exc
        offset = len(rows)
        rows.extend(_renumber(row, offset + row.source_index) for row in part)
    rows = _exclude(_dedupe(rows), exclude_ids) if exclude_ids else _dedupe(rows)
    return [_renumber(row, i) for i, row in enumerate(rows)]


def _renumber(row: SourceRow, index: int) -> SourceRow:
    return replace(row, source_index=index)


def _invalid_row(text: str, index: int, error: str) -> SourceRow:
    # Keyed by content, so a repeated bad line is one row like any other duplicate.
    return SourceRow(f"invalid-{short_hash(text)}", text, index, "invalid", "", error)


# A source list may bring its videos' transcripts: HowTo100M's released raw_caption.json (YouTube's
# captions of each video) beside the list, or inside a folder of videos.
SOURCE_CAPTIONS = "raw_caption.json"


def read_source_captions(paths: list[AnyPath | str]) -> dict[str, dict]:
    """The transcripts the sources bring: id -> {"start": [...], "end": [...], "text": [...]}, from a
    raw_caption.json beside each source file (or inside a source folder). The driver holds them all:
    at HowTo100M's 1.2M videos, split the list and its captions into parts built one after another."""
    captions: dict[str, dict] = {}
    for path in paths:
        path = location(path)
        if isinstance(path, RemotePath):
            continue
        found = (path if path.is_dir() else path.parent) / SOURCE_CAPTIONS
        if found.is_file():
            try:
                captions.update(json.loads(found.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise SourceError(f"cannot read {found}: {exc}") from exc
    return captions


def caption_key(row: SourceRow) -> str:
    """What a source's captions call the row's video: its YouTube id, or its file's name without suffix
    (HowTo100M's videos are stored as <youtube id>.mp4)."""
    if row.kind == "youtube":
        return row.video_id
    return PurePosixPath(row.locator).stem
