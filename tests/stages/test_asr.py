"""ASR on real synthesized speech with a tiny random whisper (structure, not words: weights are random)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import whisper
from cosmo_data.pipeline.config import BuildConfig
from cosmo_data.pipeline.record import ASR_FAILED, DECODE_FAILED, VideoRecord
from cosmo_data.stages import models
from cosmo_data.stages.asr import (
    AsrStage,
    AudioStream,
    DecodeSettings,
    take_window,
    transcribe_batch,
)
from cosmo_data.stages.models import TINY_WHISPER, load_whisper

FAST = {"model": TINY_WHISPER, "max_new_tokens": 8, "temperatures": [0.0], "resources": {"gpus": 0}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(models.CACHE_ENV, str(tmp_path_factory.mktemp("cosmo-cache")))
        yield


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory) -> bytes:
    """'hello world ...' spoken by espeak-ng, as the video stage delivers it: 16 kHz mono s16le."""
    directory: Path = tmp_path_factory.mktemp("speech")
    wav, pcm = directory / "speech.wav", directory / "speech.pcm"
    subprocess.run(["espeak-ng", "-w", str(wav), "hello world, this is a test of speech"], check=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-ac", "1", "-ar", "16000", "-f", "s16le", str(pcm)],
        check=True,
    )
    return pcm.read_bytes()


@pytest.fixture(scope="module")
def stage(cache) -> AsrStage:
    stage = AsrStage(BuildConfig.model_validate({"asr": FAST}))
    stage.setup()
    return stage


def record(source: str, pcm: bytes | None, index: int = 0) -> VideoRecord:
    return VideoRecord(video_id=f"v{index}", source=source, source_index=index, audio_pcm=pcm)


def as_audio(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def test_speech_becomes_well_formed_segments(stage, speech_pcm):
    [done] = stage.process([record("talk.mp4", speech_pcm)])
    duration_s = len(speech_pcm) / 2 / 16000
    assert done.status == "ok", done.error
    assert done.transcript, "the first window always yields a segment"
    assert [s.seg_idx for s in done.transcript] == list(range(len(done.transcript)))
    for segment in done.transcript:
        assert 0 <= segment.start_s < segment.end_s <= duration_s
        assert segment.text and segment.text == segment.text.strip()
        assert math.isfinite(segment.avg_logprob) and segment.avg_logprob <= 0
        assert 0 <= segment.no_speech_prob <= 1
    starts = [s.start_s for s in done.transcript]
    assert starts == sorted(starts)
    assert done.language in whisper.tokenizer.LANGUAGES
    assert done.timings["asr"] > 0


def test_batched_transcription_matches_whisper_transcribe(cache, speech_pcm):
    """Lockstep batching over videos reproduces whisper's own per-audio loop, windows and seeks included."""
    model = load_whisper(TINY_WHISPER, "cpu")
    short = as_audio(speech_pcm)
    long = np.concatenate([short] * math.ceil(45 * 16000 / len(short)))  # 45 s: several windows
    settings = DecodeSettings(
        language=None,
        temperatures=(0.0,),
        sample_len=8,
        beam_size=None,
        best_of=None,
        compression_ratio_threshold=2.4,
        logprob_threshold=-1.0,
        no_speech_threshold=0.6,
        fp16=False,
    )
    batched = transcribe_batch(model, [short, long], settings)
    for audio, mine in zip([short, long], batched):
        reference = whisper.transcribe(
            model, audio, temperature=(0.0,), condition_on_previous_text=False, fp16=False, sample_len=8
        )
        expected = [
            (round(s["start"], 2), round(s["end"], 2), s["text"].strip())
            for s in reference["segments"]
            if s["text"].strip()
        ]
        assert [(round(s.start_s, 2), round(s.end_s, 2), s.text) for s in mine.segments] == expected
        assert mine.language == reference["language"]
    assert max(s.start_s for s in batched[1].segments) >= 30.0


def _result(tokens: list[int], avg_logprob: float = -0.5, no_speech_prob: float = 0.01):
    return SimpleNamespace(tokens=tokens, avg_logprob=avg_logprob, no_speech_prob=no_speech_prob)


@pytest.fixture(scope="module")
def tokenizer():
    return whisper.tokenizer.get_tokenizer(True, num_languages=99)


def _settings() -> DecodeSettings:
    return DecodeSettings(None, (0.0,), None, None, None, 2.4, -1.0, 0.6, False)


def test_window_tokens_split_at_timestamp_pairs(tokenizer):
    def ts(seconds: float) -> int:
        return tokenizer.timestamp_begin + round(seconds / 0.02)

    hello, world = tokenizer.encode(" hello"), tokenizer.encode(" world")
    # Two complete segments, then a lone timestamp: the window is finished.
    stream = AudioStream(mel=None, content_frames=9000, language="en", seek=500)
    take_window(stream, 3000, _result([ts(0), *hello, ts(1), ts(1), *world, ts(2.5)]), tokenizer, _settings(), 2)
    assert [(s.start_s, s.end_s, s.text) for s in stream.segments] == [(5.0, 6.0, "hello"), (6.0, 7.5, "world")]
    assert stream.seek == 3500
    # An unfinished segment after the last pair: decoding resumes at that pair's time.
    stream = AudioStream(mel=None, content_frames=9000, language="en", seek=0)
    take_window(stream, 3000, _result([ts(0), *hello, ts(1.2), ts(1.2), *world]), tokenizer, _settings(), 2)
    assert [(s.start_s, s.end_s, s.text) for s in stream.segments] == [(0.0, 1.2, "hello")]
    assert stream.seek == 120
    # No pair: one segment up to the last timestamp, and the whole window is consumed.
    stream = AudioStream(mel=None, content_frames=9000, language="en", seek=3000)
    take_window(stream, 2000, _result([ts(0.4), *hello, *world]), tokenizer, _settings(), 2)
    assert [(s.start_s, s.end_s, s.text) for s in stream.segments] == [(30.0, 30.4, "hello world")]
    assert stream.seek == 5000
    # Likely silence, decoded without confidence: skipped.
    stream = AudioStream(mel=None, content_frames=9000, language="en", seek=0)
    take_window(stream, 3000, _result([ts(0), *hello], -2.0, 0.9), tokenizer, _settings(), 2)
    assert stream.segments == [] and stream.seek == 3000


def test_no_audio_and_silence_skip_cleanly(stage, speech_pcm):
    silence = bytes(2 * 16000)
    batch = stage.process(
        [record("mute.mp4", None, 0), record("quiet.mp4", silence, 1), record("talk.mp4", speech_pcm, 2)]
    )
    assert [(r.status, r.transcript, r.language) for r in batch[:2]] == [("ok", [], None), ("ok", [], None)]
    assert batch[2].status == "ok" and batch[2].transcript


def test_broken_audio_fails_alone_with_its_message(stage, speech_pcm):
    broken, good = stage.process([record("broken.mp4", speech_pcm[:-1], 0), record("talk.mp4", speech_pcm, 1)])
    assert broken.status == ASR_FAILED
    assert broken.error == f"audio of broken.mp4 is not 16-bit PCM: {len(speech_pcm) - 1} bytes is an odd length"
    assert broken.audio_pcm is None and broken.transcript == []
    assert good.status == "ok" and good.transcript


def test_records_that_failed_earlier_pass_through(stage, speech_pcm):
    failed = record("gone.mp4", speech_pcm)
    failed.fail(DECODE_FAILED, "moov atom not found")
    [out] = stage.process([failed])
    assert (out.status, out.error, out.transcript, out.timings) == (DECODE_FAILED, "moov atom not found", [], {})


def test_language_given_in_config_is_used(cache, speech_pcm):
    stage = AsrStage(BuildConfig.model_validate({"asr": {**FAST, "language": "de"}}))
    stage.setup()
    [done] = stage.process([record("talk.mp4", speech_pcm)])
    assert done.status == "ok" and done.language == "de"
