"""The platform's metadata from a video's one extraction: videos' columns, chapters, and the info dict.

yt-dlp's info dict already holds what a curator asks about a video (title, description, channel, upload
date, tags, licence, ...) and its chapters; it is kept once per video (videos.info_json) minus what is
about formats and requests: the format lists are most of its size, and the request headers may carry
cookies.
"""

from __future__ import annotations

import json
from typing import Any

# videos' column -> the info dict's key.
COLUMNS = {
    "title": "title",
    "description": "description",
    "channel": "channel",
    "channel_id": "channel_id",
    "upload_date": "upload_date",
    "tags": "tags",
    "categories": "categories",
    "license": "license",
    "platform_language": "language",
    "availability": "availability",
    "live_status": "live_status",
    "age_limit": "age_limit",
}
# Left out of info_json: formats and the requests made for them (headers may hold cookies), the caption
# tracks' URLs (their languages are kept), and yt-dlp's own bookkeeping.
DROPPED = {
    "formats",
    "requested_formats",
    "requested_downloads",
    "requested_subtitles",
    "http_headers",
    "url",
    "manifest_url",
    "fragments",
    "thumbnails",
    "automatic_captions",
    "subtitles",
    "filepath",
    "_filename",
    "filename",
    "__files_to_move",
    "__postprocessors",
    "__real_download",
}


def platform_columns(info: dict[str, Any]) -> dict[str, Any]:
    """The videos columns the info dict fills (None where it has nothing)."""
    columns = {column: info.get(key) for column, key in COLUMNS.items()}
    date = columns["upload_date"]
    if isinstance(date, str) and len(date) == 8 and date.isdigit():
        columns["upload_date"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    for column in ("tags", "categories"):
        value = columns[column]
        columns[column] = [str(v) for v in value] if isinstance(value, list) else None
    if not isinstance(columns["age_limit"], int):
        columns["age_limit"] = None
    return columns


def chapters(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The video's chapters as (start_s, end_s, title), in order."""
    rows = []
    for chapter in info.get("chapters") or []:
        start, end = chapter.get("start_time"), chapter.get("end_time")
        if start is None:
            continue
        rows.append(
            {
                "start_s": float(start),
                "end_s": float(end if end is not None else start),
                "title": chapter.get("title") or "",
            }
        )
    return rows


def info_json(info: dict[str, Any]) -> str:
    """The info dict minus formats and requests, as JSON (values yt-dlp could not serialise as text)."""
    kept = {key: value for key, value in info.items() if key not in DROPPED and not key.startswith("_")}
    kept["caption_languages"] = {
        "manual": sorted(info.get("subtitles") or {}),
        "automatic_original": sorted(k for k in info.get("automatic_captions") or {} if k.endswith("-orig")),
    }
    return json.dumps(kept, default=str, ensure_ascii=False, sort_keys=True)
