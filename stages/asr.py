"""Speech recognition (AsrStage) on one of two Whisper backends, config asr.backend.

openai_whisper: the windowing and decoding (batched independent windows across the videos of a
batch, or whisper.transcribe's sequential seek loop) live in stages/whisper_windows.py.
faster_whisper: the same windows through faster-whisper's own batched pipeline, or its transcribe
loop (stages/faster_whisper_decode.py); models/asr.py loads its weights. Once transcribed, a record's audio is dropped: nothing after ASR
needs it, and it is ~32 KB per second of video.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from cosmo_data.models import load_whisper, pick_device
from cosmo_data.models.asr import load_faster_whisper
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import ASR_FAILED, Segment, VideoFailure, VideoRecord
from cosmo_data.stages.base import process_batched, resources_from
from cosmo_data.stages.captions import has_platform_text
from cosmo_data.stages.faster_whisper_decode import transcribe_batched_ct2, transcribe_sequential_ct2
from cosmo_data.stages.whisper_windows import (
    SAMPLE_RATE,
    DecodeSettings,
    Transcription,
    is_silent,
    transcribe_batched,
    transcribe_sequential,
)

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from whisper.model import Whisper


def pcm_to_audio(record: VideoRecord) -> np.ndarray:
    pcm = record.audio_pcm or b""
    if len(pcm) % 2:
        raise VideoFailure(ASR_FAILED, f"audio of {record.source} is not 16-bit PCM: {len(pcm)} bytes is an odd length")
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    audio *= 1 / 32768.0  # in place: a 20-minute audio is 77 MB as float32
    return audio


class AsrStage:
    """Whisper transcripts for every ok record with audio: record.transcript and record.language."""

    name = "asr"

    def __init__(self, config: BuildConfig):
        self.config = config.asr
        resources = config.asr.resources
        self.resources = resources_from(resources)
        self.batch_size = resources.batch_size
        self.settings = DecodeSettings(
            language=self.config.language,
            temperatures=tuple(self.config.temperatures),
            sample_len=self.config.max_new_tokens,
            beam_size=self.config.beam_size,
            best_of=self.config.best_of,
            compression_ratio_threshold=self.config.compression_ratio_threshold,
            logprob_threshold=self.config.logprob_threshold,
            no_speech_threshold=self.config.no_speech_threshold,
            fp16=self.config.fp16,
        )
        self.model: Whisper | WhisperModel | None = None

    def setup(self) -> None:
        device = pick_device(self.config.resources)
        if self.config.backend == "faster_whisper":
            # CTranslate2 threads: the stage's declared cpus (Ray gives torch as many).
            cpu_threads = max(1, int(self.config.resources.cpus))
            self.model = load_faster_whisper(self.config.model, device, self.config.fp16, cpu_threads)
            return
        import whisper

        self.model = load_whisper(self.config.model, device)
        # Whisper's tokenizer loads its vocabulary, and tiktoken compiles its special-token pattern,
        # on first use (0.7 s on 2 cores): here, not after the first video's decode. Every language's
        # tokenizer shares both.
        tokenizer = whisper.tokenizer.get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages)
        tokenizer.encode("")

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_batched(batch, self._transcribe, stage=self.name, failure_status=ASR_FAILED)

    def _transcribe(self, records: list[VideoRecord]) -> None:
        # Transcripts that came with the video (asr.platform_captions: prefer) are not whisper's to redo.
        records = [record for record in records if not has_platform_text(record)]
        speaking: list[tuple[VideoRecord, np.ndarray]] = []
        for record in records:
            audio = pcm_to_audio(record) if record.audio_pcm is not None else None
            if audio is not None and not is_silent(audio, self.config.silence_dbfs):
                speaking.append((record, audio))
        audios = [audio for _, audio in speaking]
        faster = self.config.backend == "faster_whisper"
        if not audios:
            transcriptions = []
        elif self.config.windows == "batched" and faster:
            transcriptions = transcribe_batched_ct2(self.model, audios, self.settings, self.config.window_batch)
        elif self.config.windows == "batched":
            transcriptions = transcribe_batched(
                self.model, audios, self.settings, self.config.silence_dbfs, self.config.window_batch
            )
        else:
            transcriptions = (transcribe_sequential_ct2 if faster else transcribe_sequential)(
                self.model, audios, self.settings
            )
        for record in records:
            record.transcript = []
        for (record, audio), transcription in zip(speaking, transcriptions):
            record.transcript = to_segments(transcription, len(audio) / SAMPLE_RATE)
            if record.transcript:  # a language detected on silence or noise means nothing
                record.language = transcription.language
                record.language_probability = _rounded(transcription.language_probability)
            record.no_speech_prob = _rounded(transcription.no_speech_prob)
            record.avg_logprob = _rounded(transcription.avg_logprob)
        for record in records:
            # Curation's speech rate: 0 where nothing was said (no audio, silence, no text decoded).
            words = sum(len(segment.text.split()) for segment in record.transcript)
            record.words_per_s = round(words / record.duration_s, 4) if record.duration_s else None
        for record in records:
            # Used up: no later stage listens, and it would ride through every actor pool to the writer.
            record.audio_pcm = None


def _rounded(value: float | None) -> float | None:
    # As the segments' scores: batched decoding differs in the last float bits with batch composition.
    return None if value is None else round(value, 4)


def to_segments(transcription: Transcription, duration_s: float) -> list[Segment]:
    """Segments inside the audio: whisper may time text into the silence padding past the end."""
    inside = [raw for raw in transcription.segments if raw.start_s < duration_s]
    return [
        # Scores rounded: batched decoding differs in the last float bits with batch composition.
        replace(
            raw,
            seg_idx=index,
            start_s=round(raw.start_s, 3),
            end_s=round(min(raw.end_s, duration_s), 3),
            avg_logprob=round(raw.avg_logprob, 4),
            no_speech_prob=round(raw.no_speech_prob, 4),
        )
        for index, raw in enumerate(inside)
    ]
