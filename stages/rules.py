"""Curation rules as verdicts over plain signal values: the build's curation stages and `cosmo-data
filter` (which reads the values back from the tables) both judge through these, so they agree.

Each function returns the name of the first rule that fails, or None. A rule's name is its level and its
config field (`clip_min_brightness`), which is what `filter_reason` holds and `dropped_<name>` counts. A
signal that is unknown (None: no frame pair to measure motion on, no audio decoded) fails no rule.
Rules are tried in the config's order; RULES lists every name in the order the build applies them, which
is the order of the funnel in `cosmo-data stats`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cosmo_data.schemas.config import (
    ClipRulesConfig,
    DocumentRulesConfig,
    FrameRulesConfig,
    VideoRulesConfig,
)

# Judged from the platform's metadata before any media is downloaded (stages/download.py).
DOWNLOAD_VIDEO_RULES = ("video_licenses",)
PICTURE_VIDEO_RULES = ("video_min_motion_when_silent",)
SPEECH_RULES = (
    "video_require_text",
    "video_languages",
    "video_min_language_probability",
    "video_max_no_speech_prob",
    "video_min_avg_logprob",
    "video_min_words_per_s",
)
# Frame rules over the CLIP predictors' scores: judged after assignment (curate_document), not in the
# decode pass.
SCORED_FRAME_RULES = ("frame_max_nsfw",)
DOCUMENT_RULES = ("document_min_matched_similarity", "document_min_aesthetic", "document_max_nsfw")
RULES: tuple[str, ...] = (
    *DOWNLOAD_VIDEO_RULES,
    *(f"clip_{name}" for name in ClipRulesConfig.model_fields),
    *(f"frame_{name}" for name in FrameRulesConfig.model_fields if f"frame_{name}" not in SCORED_FRAME_RULES),
    *PICTURE_VIDEO_RULES,
    *SPEECH_RULES,
    *SCORED_FRAME_RULES,
    *DOCUMENT_RULES,
)


def _first_failure(level: str, checks: Sequence[tuple[str, float | None, float | None]]) -> str | None:
    """checks: (config field, signal value, bound); a field starting with min_ fails below its bound,
    one starting with max_ above it."""
    for name, value, bound in checks:
        if bound is None or value is None:
            continue
        if (name.startswith("min_") and value < bound) or (name.startswith("max_") and value > bound):
            return f"{level}_{name}"
    return None


def clip_failure(
    rules: ClipRulesConfig,
    *,
    duration_s: float,
    motion: float | None,
    brightness: float | None,
    sharpness: float | None,
    frozen_fraction: float | None,
) -> str | None:
    return _first_failure(
        "clip",
        [
            ("min_duration_s", duration_s, rules.min_duration_s),
            ("min_brightness", brightness, rules.min_brightness),
            ("min_sharpness", sharpness, rules.min_sharpness),
            ("min_motion", motion, rules.min_motion),
            ("max_motion", motion, rules.max_motion),
            ("max_frozen_fraction", frozen_fraction, rules.max_frozen_fraction),
        ],
    )


def frame_failure(rules: FrameRulesConfig, *, width: int, height: int) -> str | None:
    return _first_failure("frame", [("min_side_px", min(width, height), rules.min_side_px)])


def scored_frame_failure(rules: FrameRulesConfig, *, nsfw: float | None) -> str | None:
    """The frame rules over the CLIP predictors' scores (a keyframe CLIP never saw has none)."""
    return _first_failure("frame", [("max_nsfw", nsfw, rules.max_nsfw)])


def license_failure(licenses: Sequence[str], license_text: str | None) -> str | None:
    """video_licenses: keep only videos whose platform licence contains one of these texts (any case);
    a video without a licence fails it (an empty list: off)."""
    text = (license_text or "").lower()
    if licenses and not any(wanted.lower() in text for wanted in licenses):
        return "video_licenses"
    return None


def is_silent(rules: VideoRulesConfig, *, has_audio: bool | None, audio_dbfs: float | None) -> bool:
    """No audio track, or one quieter than silence_dbfs. Audio that was not decoded (ASR off) is unknown:
    not silent."""
    if has_audio is False:
        return True
    return audio_dbfs is not None and audio_dbfs < rules.silence_dbfs


def picture_failure(
    rules: VideoRulesConfig, *, motion: float | None, has_audio: bool | None, audio_dbfs: float | None
) -> str | None:
    """The video rules that need only the decode pass: static footage, when it is also silent."""
    if not is_silent(rules, has_audio=has_audio, audio_dbfs=audio_dbfs):
        return None
    return _first_failure("video", [("min_motion_when_silent", motion, rules.min_motion_when_silent)])


def speech_failure(
    rules: VideoRulesConfig,
    *,
    words_per_s: float | None,
    captions: bool,
    language: str | None,
    language_probability: float | None,
    no_speech_prob: float | None,
    avg_logprob: float | None,
) -> str | None:
    """The video rules over ASR's signals. captions: whether keyframe captions will give the video text."""
    if rules.require_text and not words_per_s and not captions:
        return "video_require_text"
    if rules.languages and language is not None and language not in rules.languages:
        return "video_languages"
    return _first_failure(
        "video",
        [
            ("min_language_probability", language_probability, rules.min_language_probability),
            ("max_no_speech_prob", no_speech_prob, rules.max_no_speech_prob),
            ("min_avg_logprob", avg_logprob, rules.min_avg_logprob),
            ("min_words_per_s", words_per_s, rules.min_words_per_s),
        ],
    )


def aggregate(values: Sequence[float], rules: DocumentRulesConfig) -> float | None:
    """Frame signals of a document as one value: their mean or a quantile, never all-must-pass."""
    if not values:
        return None
    if rules.aggregate == "mean":
        return float(np.mean(values))
    return float(np.quantile(values, rules.quantile))


def document_failure(
    rules: DocumentRulesConfig,
    *,
    matched_similarities: Sequence[float],
    aesthetics: Sequence[float] = (),
    nsfw: Sequence[float] = (),
) -> str | None:
    """Over the document's images: their matched similarity, aesthetic score and NSFW probability (the
    images that have one), each aggregated."""
    return _first_failure(
        "document",
        [
            ("min_matched_similarity", aggregate(matched_similarities, rules), rules.min_matched_similarity),
            ("min_aesthetic", aggregate(aesthetics, rules), rules.min_aesthetic),
            ("max_nsfw", aggregate(nsfw, rules), rules.max_nsfw),
        ],
    )
