"""Whisper on faster-whisper (CTranslate2), in the two windowing modes of stages/whisper_windows.py.

batched: faster-whisper's BatchedInferencePipeline, as the library (and WhisperX) runs it: Silero VAD
(bundled with faster-whisper) finds the speech, merged into chunks of at most 30 s, and up to
window_batch chunks share each encoder pass. Not our quiet-point windows (cut_windows): the pipeline
pins each chunk's first timestamp to the chunk's start, so a chunk must begin where speech does (with
our windows, speech 3 s into a window was timed from 0 s). It batches one audio's chunks, not several
videos' (a HowTo100M video of ~6 min is ~13 chunks already), and decodes at the first temperature
only; whisper's no-speech skip is applied to its output. Audio that cut_windows finds silent is skipped.

sequential: WhisperModel.transcribe, the library's own seek loop with temperature fallback, no
conditioning on previous text and no VAD, audio by audio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cosmo_data.schemas.records import Segment
from cosmo_data.stages.whisper_windows import DecodeSettings, Transcription

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import Segment as LibrarySegment
    from faster_whisper.transcribe import TranscriptionInfo


def _common_options(settings: DecodeSettings) -> dict:
    return {
        "language": settings.language,
        "task": "transcribe",
        "beam_size": settings.beam_size or 1,  # None is greedy, as in openai-whisper
        "best_of": settings.best_of or 1,
        "temperature": list(settings.temperatures),
        "compression_ratio_threshold": settings.compression_ratio_threshold,
        "log_prob_threshold": settings.logprob_threshold,
        "no_speech_threshold": settings.no_speech_threshold,
        "condition_on_previous_text": False,
        "without_timestamps": False,
        "vad_filter": False,
        "max_new_tokens": settings.sample_len,
    }


def transcribe_sequential_ct2(
    model: WhisperModel, audios: list[np.ndarray], settings: DecodeSettings
) -> list[Transcription]:
    """WhisperModel.transcribe on each float32 16 kHz audio."""
    transcriptions = []
    for audio in audios:
        found, info = model.transcribe(audio, **_common_options(settings))
        transcriptions.append(_transcription(list(found), info, settings))
    return transcriptions


def transcribe_batched_ct2(
    model: WhisperModel, audios: list[np.ndarray], settings: DecodeSettings, window_batch: int
) -> list[Transcription]:
    """BatchedInferencePipeline over each audio's speech chunks, window_batch per encoder pass."""
    from faster_whisper import BatchedInferencePipeline

    pipeline = BatchedInferencePipeline(model)
    transcriptions = []
    for audio in audios:
        # The pipeline pins each window's first timestamp to its start (max_initial_timestamp 0), so its
        # windows must begin at speech: Silero VAD's speech chunks, merged up to 30 s, as the library does.
        found, info = pipeline.transcribe(
            audio, batch_size=window_batch, **{**_common_options(settings), "vad_filter": True}
        )
        kept = [s for s in found if not _is_silence(s, settings)]
        transcriptions.append(_transcription(kept, info, settings))
    return transcriptions


def _is_silence(segment: LibrarySegment, settings: DecodeSettings) -> bool:
    """whisper's no-speech skip (BatchedInferencePipeline does not apply it): likely silence, not confident."""
    if settings.no_speech_threshold is None or segment.no_speech_prob <= settings.no_speech_threshold:
        return False
    return settings.logprob_threshold is None or segment.avg_logprob <= settings.logprob_threshold


def _transcription(found: list[LibrarySegment], info: TranscriptionInfo, settings: DecodeSettings) -> Transcription:
    segments = [
        Segment(index, s.start, s.end, s.text.strip(), s.avg_logprob, s.no_speech_prob)
        for index, s in enumerate(s for s in found if s.text.strip() and s.end > s.start)
    ]
    # Curation's signals, weighted by each segment's length as whisper_windows weights windows.
    seconds = sum(s.end_s - s.start_s for s in segments)
    no_speech = sum((s.end_s - s.start_s) * s.no_speech_prob for s in segments) / seconds if seconds else None
    logprob = sum((s.end_s - s.start_s) * s.avg_logprob for s in segments) / seconds if seconds else None
    detected = info.all_language_probs is not None  # None where the language was given or the model is English-only
    return Transcription(info.language, segments, info.language_probability if detected else None, no_speech, logprob)
