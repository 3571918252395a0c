"""Platform caption tracks as transcripts: which track is taken, json3 and WebVTT read, rolling cues
kept once, and a source's raw_caption.json entry."""

from __future__ import annotations

import json

from cosmo_data.schemas.records import VideoRecord
from cosmo_data.stages.captions import (
    PLATFORM_AUTO,
    PLATFORM_MANUAL,
    SOURCE,
    attach_source_transcript,
    has_platform_text,
    parse_json3,
    parse_vtt,
    pick_track,
)


def track(ext: str, url: str = "https://example.invalid/t") -> dict:
    return {"ext": ext, "url": f"{url}.{ext}"}


def test_a_manual_track_in_the_videos_language_comes_first_in_json3():
    info = {
        "language": "en",
        "subtitles": {"de": [track("json3")], "en-GB": [track("vtt"), track("json3")]},
        "automatic_captions": {"en-orig": [track("json3")]},
    }

    source, language, chosen = pick_track(info)

    assert (source, language, chosen["ext"]) == (PLATFORM_MANUAL, "en", "json3")


def test_a_manual_track_translated_into_the_videos_language_is_not_taken():
    # yt-dlp names a translation of a manual track "<to>-<from>": German from English here.
    info = {
        "language": "de",
        "subtitles": {"de-en": [track("json3")]},
        "automatic_captions": {"de-orig": [track("vtt")]},
    }

    assert pick_track(info)[0] == PLATFORM_AUTO


def test_only_the_original_language_automatic_track_never_a_translation():
    # YouTube lists a translation of its speech recognition under every language, "fr" included.
    info = {
        "language": "fr",
        "automatic_captions": {"fr": [track("json3")], "fr-orig": [track("json3", "orig")], "en": [track("json3")]},
    }

    source, language, chosen = pick_track(info)

    assert (source, language, chosen["url"]) == (PLATFORM_AUTO, "fr", "orig.json3")
    assert (
        pick_track({"language": "fr", "automatic_captions": {"fr": [track("json3")], "en": [track("json3")]}}) is None
    )


def test_without_a_language_only_a_sole_manual_track_is_taken():
    assert pick_track({"subtitles": {"en": [track("vtt")]}})[:2] == (PLATFORM_MANUAL, "en")
    assert pick_track({"subtitles": {"en": [track("vtt")], "de": [track("vtt")]}}) is None
    assert pick_track({"automatic_captions": {"en-orig": [track("json3")]}}) is None


def test_json3_events_overlapping_as_automatic_captions_do_end_where_the_next_begins():
    body = json.dumps(
        {
            "events": [
                {"tStartMs": 0, "dDurationMs": 4000, "segs": [{"utf8": "first"}, {"utf8": " we", "tOffsetMs": 400}]},
                {"tStartMs": 1800, "dDurationMs": 2200, "aAppend": 1, "segs": [{"utf8": "\n"}]},
                {"tStartMs": 2000, "dDurationMs": 3000, "segs": [{"utf8": "cut"}, {"utf8": " it", "tOffsetMs": 300}]},
            ]
        }
    )

    segments = parse_json3(body)

    assert [(s.start_s, s.end_s, s.text) for s in segments] == [(0.0, 2.0, "first we"), (2.0, 5.0, "cut it")]
    assert segments[0].avg_logprob is None  # no decoder scores for the platform's text


def test_rolling_vtt_cues_keep_each_line_once_and_drop_tags():
    body = (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500 align:start\nhello<00:00:00.500><c> there</c>\n\n"
        "00:00:01.500 --> 00:00:01.510\nhello there\n\n"
        "00:00:01.510 --> 00:00:03.000\nhello there\ngeneral kenobi\n\n"
        "00:01:00.000 --> 00:01:02.250\nhello there\n"
    )

    segments = parse_vtt(body)

    assert [(s.start_s, s.end_s, s.text) for s in segments] == [
        (0.0, 1.5, "hello there"),
        (1.51, 3.0, "general kenobi"),
    ]


def test_a_sources_raw_caption_entry_is_the_transcript_and_skips_whisper():
    record = VideoRecord("v", "v", 0)

    attach_source_transcript(record, {"start": [0.5, 2], "end": [2, 3.5], "text": ["mix the flour", "  "]})

    assert [(s.start_s, s.end_s, s.text) for s in record.transcript] == [(0.5, 2.0, "mix the flour")]
    assert record.text_source == SOURCE and has_platform_text(record)
    empty = VideoRecord("w", "w", 1)
    attach_source_transcript(empty, None)
    assert not has_platform_text(empty)
