"""The platform's caption tracks as a video's transcript (asr.platform_captions).

Picked from the one extraction's info dict, fetched after the media with the same identity, and never
inside the media call: a caption request that meets a 429 loses the captions (whisper then runs), never
the video. Only text the speaker's words are: a manual track in the video's language, or the automatic
track YouTube made from its audio (`<lang>-orig`); every other automatic track is a machine translation
of that one and is never taken. json3 (YouTube) gives each word's offset; WebVTT (the generic extractor's
<track> elements) is read as cues. YouTube's rolling automatic cues repeat the previous line in every
cue: each line is kept once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from cosmo_data.schemas.records import Segment, VideoRecord

PLATFORM_MANUAL = "platform_manual"
PLATFORM_AUTO = "platform_auto"
WHISPER = "whisper"
# Transcripts the source list brought along (HowTo100M's raw_caption.json).
SOURCE = "source"
PLATFORM_TEXT = frozenset({PLATFORM_MANUAL, PLATFORM_AUTO, SOURCE})
FORMATS = ("json3", "vtt")


def has_platform_text(record: VideoRecord) -> bool:
    """Whether the record's transcript came with it (platform captions, the source's): no whisper."""
    return record.text_source in PLATFORM_TEXT and bool(record.transcript)


def pick_track(info: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """(text_source, language, track format dict) of the track to use, or None.

    A manual track in the video's language (any of its regional variants), else the original-language
    automatic track; where the platform names no language, a manual track only when it is the only one.
    """
    language = (info.get("language") or "").split("-")[0] or None
    manual = info.get("subtitles") or {}
    automatic = info.get("automatic_captions") or {}
    if language:
        # A regional or script variant (en-GB, zh-Hans), never "<to>-<from>": yt-dlp's key for a
        # machine translation of a manual track (en-de: English from German).
        variants = sorted(k for k in manual if re.fullmatch(rf"{re.escape(language)}-[A-Z0-9]\w*", k))
        for key in [language, *variants]:
            track = _best_format(manual.get(key))
            if track:
                return PLATFORM_MANUAL, language, track
        track = _best_format(automatic.get(f"{language}-orig"))
        if track:
            return PLATFORM_AUTO, language, track
        return None
    named = [key for key in manual if key != "live_chat"]
    if len(named) == 1:
        track = _best_format(manual[named[0]])
        if track:
            return PLATFORM_MANUAL, named[0].split("-")[0], track
    return None


def _best_format(formats: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    by_ext = {f.get("ext"): f for f in formats or [] if f.get("url")}
    return next((by_ext[ext] for ext in FORMATS if ext in by_ext), None)


def fetch_transcript(info: dict[str, Any], read_url: Callable[[str], str]) -> tuple[str, str, list[Segment]] | None:
    """(text_source, language, segments) from the picked track, or None where there is none."""
    picked = pick_track(info)
    if picked is None:
        return None
    text_source, language, track = picked
    body = read_url(track["url"])
    if track.get("ext") == "json3":
        segments = parse_json3(body)
    else:
        segments = parse_vtt(body)
    return (text_source, language, segments) if segments else None


def parse_json3(body: str) -> list[Segment]:
    """YouTube's json3: events with a start, a duration and segs of text (each word's offset within the
    event). An automatic track's events overlap (a line stays up while the next is spoken): each ends
    where the next starts."""
    events = []
    for event in json.loads(body).get("events") or []:
        text = " ".join("".join(seg.get("utf8", "") for seg in event.get("segs") or []).split())
        if text:
            start = event.get("tStartMs", 0) / 1000
            events.append((start, start + event.get("dDurationMs", 0) / 1000, text))
    segments = []
    for index, (start, end, text) in enumerate(events):
        if index + 1 < len(events):
            end = min(end, max(start, events[index + 1][0]))
        segments.append(_segment(len(segments), start, end, text))
    return segments


_CUE_TIME = re.compile(r"(\d+:)?(\d+):(\d+)[.,](\d+)\s*-->\s*(\d+:)?(\d+):(\d+)[.,](\d+)")
_TAG = re.compile(r"<[^>]*>")


def _seconds(hours: str | None, minutes: str, seconds: str, fraction: str) -> float:
    return int((hours or "0:")[:-1]) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction) / 10 ** len(fraction)


def parse_vtt(body: str) -> list[Segment]:
    """WebVTT cues as segments; a line seen in one of the last two cues is not repeated (rolling cues)."""
    segments: list[Segment] = []
    recent: list[str] = []
    for block in re.split(r"\n\s*\n", body.replace("\r\n", "\n")):
        lines = block.strip().split("\n")
        timing = next((i for i, line in enumerate(lines) if _CUE_TIME.search(line)), None)
        if timing is None:
            continue
        match = _CUE_TIME.search(lines[timing])
        start = _seconds(*match.group(1, 2, 3, 4))
        end = _seconds(*match.group(5, 6, 7, 8))
        fresh = []
        for line in lines[timing + 1 :]:
            text = " ".join(_TAG.sub("", line).split())
            if text and text not in recent:
                fresh.append(text)
                recent = (recent + [text])[-2:]
        if fresh:
            segments.append(_segment(len(segments), start, end, " ".join(fresh)))
    return segments


def _segment(index: int, start: float, end: float, text: str) -> Segment:
    # No decoder scores: the platform's text is not whisper's.
    return Segment(index, round(start, 3), round(max(end, start), 3), text, avg_logprob=None, no_speech_prob=None)


def source_segments(entry: dict[str, list]) -> list[Segment]:
    """A source's transcript of one video, HowTo100M's raw_caption.json layout: parallel start, end and
    text lists (seconds); empty texts are skipped."""
    rows = zip(entry.get("start") or [], entry.get("end") or [], entry.get("text") or [])
    segments: list[Segment] = []
    for start, end, text in rows:
        text = " ".join(str(text).split())
        if text:
            segments.append(_segment(len(segments), float(start), float(end), text))
    return segments


def attach_source_transcript(record: VideoRecord, entry: dict[str, list] | None) -> None:
    """Give the record the transcript its source brought (text_source "source"), where there is one."""
    segments = source_segments(entry) if entry else []
    if segments:
        record.transcript, record.text_source = segments, SOURCE
