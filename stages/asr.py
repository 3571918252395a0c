"""Speech recognition with openai-whisper, batched across the videos of a batch.

whisper.transcribe() works on one audio at a time. transcribe_batch() runs the same procedure (30 s
windows, each window seeking to its last complete timestamp, temperature fallback, the no-speech
skip, no conditioning on previous text) in lockstep over several audios, so each encoder pass and
each decoding loop serves one window of every video still running. With one audio it reproduces
whisper.transcribe(..., condition_on_previous_text=False) segment for segment (see the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from cosmo_data.pipeline.config import BuildConfig
from cosmo_data.pipeline.record import ASR_FAILED, Segment, VideoFailure, VideoRecord
from cosmo_data.pipeline.stage import process_batched, resources_from
from cosmo_data.stages.models import load_whisper, pick_device

if TYPE_CHECKING:  # whisper is imported where it is used: importing it pulls in numba
    from whisper.decoding import DecodingResult
    from whisper.model import Whisper
    from whisper.tokenizer import Tokenizer

SAMPLE_RATE = 16000  # whisper.audio.SAMPLE_RATE; the decoder's PCM is 16 kHz mono s16le too
HOP_LENGTH = 160  # mel frame hop: 100 frames per second
WINDOW_FRAMES = 3000  # whisper sees 30 s of mel frames at a time
WINDOW_SAMPLES = WINDOW_FRAMES * HOP_LENGTH


@dataclass(frozen=True)
class DecodeSettings:
    language: str | None  # None detects it per audio from its first 30 s
    temperatures: tuple[float, ...]
    sample_len: int | None
    beam_size: int | None
    best_of: int | None
    compression_ratio_threshold: float | None
    logprob_threshold: float | None
    no_speech_threshold: float | None
    fp16: bool


@dataclass
class Transcription:
    language: str
    segments: list[Segment]


@dataclass
class AudioStream:
    """One audio being transcribed: its padded mel and how far decoding has got."""

    mel: torch.Tensor
    content_frames: int
    language: str
    seek: int = 0
    segments: list[Segment] = field(default_factory=list)


@torch.no_grad()
def transcribe_batch(model: Whisper, audios: list[np.ndarray], settings: DecodeSettings) -> list[Transcription]:
    """Transcribe float32 16 kHz audios together; segment times are as whisper reports them."""
    import whisper

    dtype = torch.float16 if settings.fp16 and model.device.type == "cuda" else torch.float32
    # Like whisper.transcribe: 30 s of silence appended so the last window can be sliced whole.
    mels = [
        whisper.log_mel_spectrogram(audio, model.dims.n_mels, padding=WINDOW_SAMPLES, device=model.device)
        for audio in audios
    ]
    languages = _languages(model, mels, settings.language, dtype)
    streams = [
        AudioStream(mel=mel, content_frames=mel.shape[-1] - WINDOW_FRAMES, language=language)
        for mel, language in zip(mels, languages)
    ]
    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    frames_per_token = WINDOW_FRAMES // model.dims.n_audio_ctx
    while active := [s for s in streams if s.seek < s.content_frames]:
        sizes = [min(WINDOW_FRAMES, s.content_frames - s.seek) for s in active]
        windows = torch.stack(
            [whisper.pad_or_trim(s.mel[:, s.seek : s.seek + n], WINDOW_FRAMES) for s, n in zip(active, sizes)]
        )
        features = model.embed_audio(windows.to(dtype))
        results = _decode_with_fallback(model, features, [s.language for s in active], settings, dtype)
        for stream, size, result in zip(active, sizes, results):
            take_window(stream, size, result, tokenizer, settings, frames_per_token)
    return [Transcription(s.language, s.segments) for s in streams]


def _languages(model: Whisper, mels: list[torch.Tensor], language: str | None, dtype: torch.dtype) -> list[str]:
    import whisper

    if language is not None or not model.is_multilingual:
        return [language or "en"] * len(mels)
    # Detected from the first 30 s of the padded mel, as whisper.transcribe does.
    firsts = torch.stack([whisper.pad_or_trim(mel, WINDOW_FRAMES) for mel in mels]).to(dtype)
    _, probabilities = model.detect_language(firsts)
    return [max(probs, key=probs.get) for probs in probabilities]


def _decode_with_fallback(
    model: Whisper, features: torch.Tensor, languages: list[str], settings: DecodeSettings, dtype: torch.dtype
) -> list[DecodingResult]:
    """Decode every window at the first temperature, then only the failing ones at the next."""
    import whisper

    results: list[DecodingResult] = [None] * len(languages)
    pending = list(range(len(languages)))
    for temperature in settings.temperatures:
        # One language per decoding task; windows of different languages decode in separate calls.
        for language in sorted({languages[i] for i in pending}):
            group = [i for i in pending if languages[i] == language]
            options = whisper.DecodingOptions(
                task="transcribe",
                language=language,
                temperature=temperature,
                sample_len=settings.sample_len,
                beam_size=settings.beam_size if temperature == 0 else None,
                best_of=settings.best_of if temperature > 0 else None,
                fp16=dtype == torch.float16,
            )
            for i, result in zip(group, whisper.decode(model, features[group], options)):
                results[i] = result
        pending = [i for i in pending if _needs_fallback(results[i], settings)]
        if not pending:
            break
    return results


def _needs_fallback(result: DecodingResult, settings: DecodeSettings) -> bool:
    too_repetitive = (
        settings.compression_ratio_threshold is not None
        and result.compression_ratio > settings.compression_ratio_threshold
    )
    too_unlikely = settings.logprob_threshold is not None and result.avg_logprob < settings.logprob_threshold
    # Probably silence: a hotter temperature would only invent words.
    silence = (
        settings.no_speech_threshold is not None
        and result.no_speech_prob > settings.no_speech_threshold
        and too_unlikely
    )
    return (too_repetitive or too_unlikely) and not silence


def _is_silence(result: DecodingResult, settings: DecodeSettings) -> bool:
    """whisper's no-speech skip: likely silence, and not decoded with confidence."""
    if settings.no_speech_threshold is None or result.no_speech_prob <= settings.no_speech_threshold:
        return False
    return settings.logprob_threshold is None or result.avg_logprob <= settings.logprob_threshold


def take_window(
    stream: AudioStream,
    size: int,
    result: DecodingResult,
    tokenizer: Tokenizer,
    settings: DecodeSettings,
    frames_per_token: int,
) -> None:
    """Turn one window's tokens into segments and move the stream's seek past what they cover."""
    if _is_silence(result, settings):
        stream.seek += size
        return
    offset_s = stream.seek * HOP_LENGTH / SAMPLE_RATE
    token_s = frames_per_token * HOP_LENGTH / SAMPLE_RATE
    tokens = list(result.tokens)
    first_timestamp = tokenizer.timestamp_begin
    is_timestamp = [token >= first_timestamp for token in tokens]
    # Two timestamps in a row close one segment and open the next.
    boundaries = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    ends_with_lone_timestamp = is_timestamp[-2:] == [False, True]

    def add(piece: list[int], start_s: float, end_s: float) -> None:
        text = tokenizer.decode([t for t in piece if t < tokenizer.eot]).strip()
        if text and start_s != end_s:
            stream.segments.append(
                Segment(len(stream.segments), start_s, end_s, text, result.avg_logprob, result.no_speech_prob)
            )

    if boundaries:
        cuts = boundaries + [len(tokens)] if ends_with_lone_timestamp else boundaries
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            add(
                piece,
                offset_s + (piece[0] - first_timestamp) * token_s,
                offset_s + (piece[-1] - first_timestamp) * token_s,
            )
            last = cut
        if ends_with_lone_timestamp:
            stream.seek += size  # nothing is said after the last timestamp
        else:
            # The text after the last complete segment is decoded again from its start.
            stream.seek += (tokens[last - 1] - first_timestamp) * frames_per_token
    else:
        timestamps = [t for t in tokens if t >= first_timestamp]
        duration_s = size * HOP_LENGTH / SAMPLE_RATE
        if timestamps and timestamps[-1] != first_timestamp:
            duration_s = (timestamps[-1] - first_timestamp) * token_s
        add(tokens, offset_s, offset_s + duration_s)
        stream.seek += size


def pcm_to_audio(record: VideoRecord) -> np.ndarray:
    pcm = record.audio_pcm or b""
    if len(pcm) % 2:
        raise VideoFailure(
            ASR_FAILED, f"audio of {record.source} is not 16-bit PCM: {len(pcm)} bytes is an odd length"
        )
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def is_silent(audio: np.ndarray, threshold_dbfs: float) -> bool:
    if audio.size == 0:
        return True
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-10)) < threshold_dbfs


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
        self.model: Whisper | None = None

    def setup(self) -> None:
        self.model = load_whisper(self.config.model, pick_device(self.config.resources))

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_batched(batch, self._transcribe, stage=self.name, failure_status=ASR_FAILED)

    def _transcribe(self, records: list[VideoRecord]) -> None:
        speaking: list[tuple[VideoRecord, np.ndarray]] = []
        for record in records:
            audio = pcm_to_audio(record) if record.audio_pcm is not None else None
            if audio is not None and not is_silent(audio, self.config.silence_dbfs):
                speaking.append((record, audio))
        audios = [audio for _, audio in speaking]
        transcriptions = transcribe_batch(self.model, audios, self.settings) if audios else []
        for record in records:
            record.transcript = []
        for (record, audio), transcription in zip(speaking, transcriptions):
            record.transcript = to_segments(transcription, len(audio) / SAMPLE_RATE)
            if record.transcript:  # a language detected on silence or noise means nothing
                record.language = transcription.language


def to_segments(transcription: Transcription, duration_s: float) -> list[Segment]:
    """Segments inside the audio: whisper may time text into the silence padding past the end."""
    inside = [raw for raw in transcription.segments if raw.start_s < duration_s]
    return [
        # Scores rounded: batched decoding differs in the last float bits with batch composition.
        replace(raw, seg_idx=index, start_s=round(raw.start_s, 3), end_s=round(min(raw.end_s, duration_s), 3),
                avg_logprob=round(raw.avg_logprob, 4), no_speech_prob=round(raw.no_speech_prob, 4))
        for index, raw in enumerate(inside)
    ]
