"""Whisper over many audios at once, in two windowing modes (the machinery of stages/asr.py).

batched (transcribe_batched, the default): each audio is cut at quiet points into independent windows
of at most 30 s, and silent ones are dropped. No window depends on another, so up to window_batch
windows of any videos share each encoder pass and decoding loop (as WhisperX and faster-whisper's
BatchedInferencePipeline do); a 20-minute video is a few passes instead of 40 rounds. Each audio's
language is detected from its first window.

sequential (transcribe_sequential): whisper.transcribe's procedure (30 s windows, each seeking to
its last complete timestamp, temperature fallback, the no-speech skip, no conditioning on previous
text) in lockstep over several audios, one window of every video still running per pass. With one
audio it reproduces whisper.transcribe(..., condition_on_previous_text=False) segment for segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import zip_longest
from typing import TYPE_CHECKING

import numpy as np

from cosmo_data.models import no_grad
from cosmo_data.schemas.records import Segment

if TYPE_CHECKING:  # torch and whisper are imported where they are used (whisper pulls in numba)
    import torch
    from whisper.decoding import DecodingResult
    from whisper.model import Whisper
    from whisper.tokenizer import Tokenizer

SAMPLE_RATE = 16000  # whisper.audio.SAMPLE_RATE; the decoder's PCM is 16 kHz mono s16le too
HOP_LENGTH = 160  # mel frame hop: 100 frames per second
WINDOW_FRAMES = 3000  # whisper sees 30 s of mel frames at a time
WINDOW_SAMPLES = WINDOW_FRAMES * HOP_LENGTH
N_FFT = 400  # whisper.audio.N_FFT: the STFT's window
ENERGY_FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms: shorter than any pause between words
# A window is cut in the last 5 s before its 30 s limit: a pause between sentences nearly always
# falls in 5 s of speech, and windows stay near 30 s, so there are few of them and each has context.
CUT_SEARCH_SAMPLES = 5 * SAMPLE_RATE


@dataclass(frozen=True)
class DecodeSettings:
    # None detects it per audio: sequential from its first 30 s, batched from its first window.
    language: str | None
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
    language: str | None  # None: batched found no window with sound to detect it from
    segments: list[Segment]
    # Curation signals: the detected language's probability (None where it was given, not detected),
    # and no-speech probability and average log-probability over every decoded window, weighted by the
    # window's length (None where no window was decoded).
    language_probability: float | None = None
    no_speech_prob: float | None = None
    avg_logprob: float | None = None


class WindowScores:
    """Length-weighted means of the decoded windows' no-speech probability and average log-probability."""

    def __init__(self) -> None:
        self.seconds = self.no_speech = self.logprob = 0.0

    def add(self, seconds: float, result: DecodingResult) -> None:
        self.seconds += seconds
        self.no_speech += seconds * result.no_speech_prob
        self.logprob += seconds * result.avg_logprob

    def means(self) -> tuple[float | None, float | None]:
        if not self.seconds:
            return None, None
        return self.no_speech / self.seconds, self.logprob / self.seconds


@dataclass(frozen=True)
class Piece:
    """Text of a window between two timestamps, in seconds from the window's start."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class WindowText:
    """A window's decoded text cut at its timestamp pairs."""

    pieces: list[Piece]  # closed by a timestamp, or the whole text when the window has no pair
    # Where the text that the window's end cut off starts (the last pair), and that text; None
    # when nothing was cut off.
    open_from_s: float | None
    open_text: str


@dataclass(frozen=True)
class AudioWindow:
    """An independent stretch of at most 30 s of one audio."""

    audio: int  # index of its audio in the batch
    start: int  # samples
    end: int


@dataclass
class AudioStream:
    """One audio being transcribed: its padded mel and how far decoding has got."""

    mel: torch.Tensor
    content_frames: int
    language: str
    seek: int = 0
    segments: list[Segment] = field(default_factory=list)
    scores: WindowScores = field(default_factory=WindowScores)


def cut_windows(audio: np.ndarray, silence_dbfs: float) -> list[tuple[int, int]]:
    """(start, end) samples of consecutive windows of at most 30 s covering a float32 16 kHz audio.

    A window that does not reach the audio's end is cut in the middle of the quietest 20 ms frame
    (the latest of equals) of the CUT_SEARCH_SAMPLES before its 30 s limit. Windows quieter than
    silence_dbfs are left out.
    """
    n_frames = len(audio) // ENERGY_FRAME_SAMPLES
    frames = audio[: n_frames * ENERGY_FRAME_SAMPLES].reshape(n_frames, ENERGY_FRAME_SAMPLES)
    energy = np.sqrt(np.einsum("ij,ij->i", frames, frames) / ENERGY_FRAME_SAMPLES)  # RMS per frame
    windows: list[tuple[int, int]] = []
    start = 0
    while start < len(audio):
        end = len(audio)
        if end - start > WINDOW_SAMPLES:
            limit = start + WINDOW_SAMPLES
            first = -(-(limit - CUT_SEARCH_SAMPLES) // ENERGY_FRAME_SAMPLES)  # first frame wholly in the span
            span = energy[first : limit // ENERGY_FRAME_SAMPLES]
            quietest = first + len(span) - 1 - int(np.argmin(span[::-1]))
            end = quietest * ENERGY_FRAME_SAMPLES + ENERGY_FRAME_SAMPLES // 2
        if not is_silent(audio[start:end], silence_dbfs):
            windows.append((start, end))
        start = end
    return windows


@no_grad
def transcribe_batched(
    model: Whisper, audios: list[np.ndarray], settings: DecodeSettings, silence_dbfs: float, window_batch: int
) -> list[Transcription]:
    """Transcribe float32 16 kHz audios as independent windows, up to window_batch per pass."""
    import torch
    import whisper

    dtype = _dtype(model, settings)
    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    token_s = WINDOW_FRAMES // model.dims.n_audio_ctx * HOP_LENGTH / SAMPLE_RATE
    per_audio = [
        [AudioWindow(index, start, end) for start, end in cut_windows(audio, silence_dbfs)]
        for index, audio in enumerate(audios)
    ]
    # Round-robin over the audios: every first window comes before any second one, so an audio's
    # language, detected from its first window, is known by the pass that decodes its later windows.
    windows = [window for rank in zip_longest(*per_audio) for window in rank if window is not None]
    detect = settings.language is None and model.is_multilingual
    languages: list[str | None] = [None if detect else settings.language or "en"] * len(audios)
    language_probabilities: list[float | None] = [None] * len(audios)
    scores = [WindowScores() for _ in audios]
    segments: list[list[Segment]] = [[] for _ in audios]
    for first in range(0, len(windows), window_batch):
        batch = windows[first : first + window_batch]
        mels = torch.stack([_window_mel(audios[w.audio][w.start : w.end], model) for w in batch])
        features = model.embed_audio(mels.to(dtype))
        # An audio's language comes from its first window only, even where later ones share the pass.
        firsts: dict[int, int] = {}
        for i, w in enumerate(batch):
            if languages[w.audio] is None:
                firsts.setdefault(w.audio, i)
        undetected = list(firsts.values())
        if undetected:
            _, probabilities = model.detect_language(features[undetected])
            for i, probs in zip(undetected, probabilities):
                languages[batch[i].audio] = max(probs, key=probs.get)
                language_probabilities[batch[i].audio] = float(max(probs.values()))
        results = _decode_with_fallback(model, features, [languages[w.audio] for w in batch], settings, dtype)
        for window, result in zip(batch, results):
            scores[window.audio].add((window.end - window.start) / SAMPLE_RATE, result)
            if not _is_silence(result, settings):
                segments[window.audio].extend(window_segments(window, result, tokenizer, token_s))
    return [
        Transcription(language, [replace(s, seg_idx=i) for i, s in enumerate(found)], probability, *score.means())
        for language, found, probability, score in zip(languages, segments, language_probabilities, scores)
    ]


def _window_mel(audio: np.ndarray, model: Whisper) -> torch.Tensor:
    """A window's log-mel padded with zeros to 30 s, as whisper.transcribe pads its last window."""
    import whisper

    # The zero samples let the STFT's reflection work on windows shorter than its N_FFT; their
    # frames are dropped again.
    mel = whisper.log_mel_spectrogram(audio, model.dims.n_mels, padding=N_FFT, device=model.device)
    return whisper.pad_or_trim(mel[:, : len(audio) // HOP_LENGTH], WINDOW_FRAMES)


def window_segments(window: AudioWindow, result: DecodingResult, tokenizer: Tokenizer, token_s: float) -> list[Segment]:
    """A batched window's segments in audio time; nothing re-seeks, so cut-off text runs to the window's end."""
    window_s = (window.end - window.start) / SAMPLE_RATE
    text = split_window_tokens(list(result.tokens), tokenizer, token_s, window_s)
    pieces = list(text.pieces)
    if text.open_from_s is not None and text.open_text:
        pieces.append(Piece(text.open_from_s, window_s, text.open_text))
    offset_s = window.start / SAMPLE_RATE
    segments = []
    for piece in pieces:
        # Whisper may time text past a short window's end: keep it inside, so windows do not overlap.
        start_s, end_s = min(piece.start_s, window_s), min(piece.end_s, window_s)
        if start_s < end_s:
            segments.append(  # seg_idx is set once the audio's windows are together
                Segment(0, offset_s + start_s, offset_s + end_s, piece.text, result.avg_logprob, result.no_speech_prob)
            )
    return segments


@no_grad
def transcribe_sequential(model: Whisper, audios: list[np.ndarray], settings: DecodeSettings) -> list[Transcription]:
    """Transcribe float32 16 kHz audios together; segment times are as whisper reports them."""
    import torch
    import whisper

    dtype = _dtype(model, settings)
    # Like whisper.transcribe: 30 s of silence appended so the last window can be sliced whole.
    mels = [
        whisper.log_mel_spectrogram(audio, model.dims.n_mels, padding=WINDOW_SAMPLES, device=model.device)
        for audio in audios
    ]
    languages, probabilities = _languages(model, mels, settings.language, dtype)
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
            stream.scores.add(size * HOP_LENGTH / SAMPLE_RATE, result)
            take_window(stream, size, result, tokenizer, settings, frames_per_token)
    return [
        Transcription(s.language, s.segments, probability, *s.scores.means())
        for s, probability in zip(streams, probabilities)
    ]


def _dtype(model: Whisper, settings: DecodeSettings) -> torch.dtype:
    import torch

    return torch.float16 if settings.fp16 and model.device.type == "cuda" else torch.float32


def _languages(
    model: Whisper, mels: list[torch.Tensor], language: str | None, dtype: torch.dtype
) -> tuple[list[str], list[float | None]]:
    """Each audio's language and its detected probability (None where it was given)."""
    import torch
    import whisper

    if language is not None or not model.is_multilingual:
        return [language or "en"] * len(mels), [None] * len(mels)
    # Detected from the first 30 s of the padded mel, as whisper.transcribe does.
    firsts = torch.stack([whisper.pad_or_trim(mel, WINDOW_FRAMES) for mel in mels]).to(dtype)
    _, probabilities = model.detect_language(firsts)
    return [max(probs, key=probs.get) for probs in probabilities], [float(max(p.values())) for p in probabilities]


def _decode_with_fallback(
    model: Whisper, features: torch.Tensor, languages: list[str], settings: DecodeSettings, dtype: torch.dtype
) -> list[DecodingResult]:
    """Decode every window at the first temperature, then only the failing ones at the next."""
    import torch
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
            # openai-whisper's beam search fails on more than one window at a time ("size of tensor a
            # (10) must match ... b (2)": 20250625 sizes its cross-attention cache for the windows, not
            # windows x beams), so beam-searched windows decode one by one.
            beams = options.beam_size is not None and options.beam_size > 1
            for part in [[i] for i in group] if beams else [group]:
                for i, result in zip(part, whisper.decode(model, features[part], options)):
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


def split_window_tokens(tokens: list[int], tokenizer: Tokenizer, token_s: float, window_s: float) -> WindowText:
    """Cut a window's tokens into text pieces at its timestamp pairs, as whisper.transcribe does.

    token_s is the time one timestamp step stands for, window_s the window's length. Pieces
    without text or without length are left out.
    """
    first_timestamp = tokenizer.timestamp_begin
    is_timestamp = [token >= first_timestamp for token in tokens]
    # Two timestamps in a row close one segment and open the next.
    boundaries = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    ends_with_lone_timestamp = is_timestamp[-2:] == [False, True]

    def text_of(piece: list[int]) -> str:
        return tokenizer.decode([t for t in piece if t < tokenizer.eot]).strip()

    def time_of(timestamp: int) -> float:
        return (timestamp - first_timestamp) * token_s

    if not boundaries:
        timestamps = [t for t in tokens if t >= first_timestamp]
        end_s = time_of(timestamps[-1]) if timestamps and timestamps[-1] != first_timestamp else window_s
        pieces = [Piece(0.0, end_s, text_of(tokens))]
        open_from_s, open_text = None, ""
    else:
        cuts = boundaries + [len(tokens)] if ends_with_lone_timestamp else boundaries
        pieces = [
            Piece(time_of(tokens[last]), time_of(tokens[cut - 1]), text_of(tokens[last:cut]))
            for last, cut in zip([0, *cuts], cuts)
        ]
        if ends_with_lone_timestamp:  # nothing is said after the last timestamp
            open_from_s, open_text = None, ""
        else:
            open_from_s, open_text = time_of(tokens[cuts[-1] - 1]), text_of(tokens[cuts[-1] :])
    return WindowText([p for p in pieces if p.text and p.start_s != p.end_s], open_from_s, open_text)


def take_window(
    stream: AudioStream,
    size: int,
    result: DecodingResult,
    tokenizer: Tokenizer,
    settings: DecodeSettings,
    frames_per_token: int,
) -> None:
    """Turn one sequential window's tokens into segments and move the stream's seek past what they cover."""
    if _is_silence(result, settings):
        stream.seek += size
        return
    offset_s = stream.seek * HOP_LENGTH / SAMPLE_RATE
    token_s = frames_per_token * HOP_LENGTH / SAMPLE_RATE
    text = split_window_tokens(list(result.tokens), tokenizer, token_s, size * HOP_LENGTH / SAMPLE_RATE)
    for piece in text.pieces:
        stream.segments.append(
            Segment(
                len(stream.segments),
                offset_s + piece.start_s,
                offset_s + piece.end_s,
                piece.text,
                result.avg_logprob,
                result.no_speech_prob,
            )
        )
    if text.open_from_s is None:
        stream.seek += size
    else:
        # The text after the last complete segment is decoded again from its start.
        stream.seek += round(text.open_from_s * SAMPLE_RATE / HOP_LENGTH)


def is_silent(audio: np.ndarray, threshold_dbfs: float) -> bool:
    if audio.size == 0:
        return True
    rms = float(np.sqrt(np.dot(audio, audio) / audio.size))  # no squared copy of a long audio
    return 20 * np.log10(max(rms, 1e-10)) < threshold_dbfs
