"""The decode pass's audio keeps the video's timeline (sample n at n / 16000 s) through damaged and
missing audio packets, and is not decoded at all when no ASR will listen."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from cosmo_data.pipeline.generated_media import file_arg, run_ffmpeg
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import VideoRecord
from cosmo_data.stages.audio import AUDIO_RATE
from cosmo_data.stages.decode import decode_video

TONE_S = (6.0, 7.0)  # a 1 kHz tone here, silence elsewhere
DAMAGED_S = (2.0, 4.0)  # audio packets starting here are dropped or garbled
DURATION_S = 8.0


def make_tone_video(path: Path) -> Path:
    start, end = TONE_S
    run_ffmpeg(
        [
            *("-f", "lavfi", "-i", f"testsrc2=s=64x48:r=10:d={DURATION_S}"),
            *("-f", "lavfi", "-i", f"sine=f=1000:r=44100:d={DURATION_S},volume='between(t,{start},{end})':eval=frame"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k"),
            file_arg(path),
        ]
    )
    return path


def damage_audio(source: Path, target: Path, how: str) -> Path:
    """Remux source with its audio packets in DAMAGED_S dropped, or their bytes replaced by 0xFF (which
    the AAC decoder refuses), timestamps untouched."""
    with av.open(str(source)) as original, av.open(str(target), "w") as copy:
        streams = {s.index: copy.add_stream_from_template(s) for s in original.streams}
        for packet in original.demux():
            if packet.dts is None:
                continue
            damaged = (
                packet.stream.type == "audio" and DAMAGED_S[0] <= float(packet.pts * packet.time_base) < DAMAGED_S[1]
            )
            if damaged and how == "drop":
                continue
            if damaged:
                garbled = av.Packet(b"\xff" * packet.size)
                garbled.pts, garbled.dts, garbled.duration = packet.pts, packet.dts, packet.duration
                garbled.time_base = packet.time_base
                packet = garbled
                packet.stream = streams[1]
            else:
                packet.stream = streams[packet.stream.index]
            copy.mux(packet)
    return target


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("audio_media")
    for suffix in (".mp4", ".mkv"):
        make_tone_video(directory / f"tone{suffix}")
        for how in ("drop", "garble"):
            damage_audio(directory / f"tone{suffix}", directory / f"{how}{suffix}", how)
    return directory


def decode(path: Path, config: BuildConfig | None = None) -> VideoRecord:
    record = VideoRecord(video_id="v", source=path.name, source_index=0)
    decode_video(path, record, config or BuildConfig())
    return record


def tone_onset_s(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, np.int16).astype(np.float64)
    frame = AUDIO_RATE // 100  # 10 ms
    energy = np.sqrt((samples[: len(samples) // frame * frame].reshape(-1, frame) ** 2).mean(axis=1))
    return float(np.argmax(energy > 1000) * frame / AUDIO_RATE)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("name", ["tone", "drop", "garble"])
def test_damaged_audio_keeps_later_sound_at_its_time(media, name, suffix):
    record = decode(media / f"{name}{suffix}")
    assert record.ok and record.has_audio
    # Matroska keeps the encoder's priming (1024 samples) in the timeline: a frame or so late.
    assert tone_onset_s(record.audio_pcm) == pytest.approx(TONE_S[0], abs=0.05)
    assert len(record.audio_pcm) / 2 / AUDIO_RATE == pytest.approx(DURATION_S, abs=0.05)
    if name != "tone":  # the damaged stretch is silence
        samples = np.frombuffer(record.audio_pcm, np.int16)
        start, end = (round(t * AUDIO_RATE) for t in DAMAGED_S)
        assert not np.any(samples[start + AUDIO_RATE // 10 : end - AUDIO_RATE // 10])


def test_no_audio_is_decoded_without_asr(media, monkeypatch):
    import cosmo_data.stages.decode as decode_module

    made = []
    real = decode_module.AudioCollector
    monkeypatch.setattr(decode_module, "AudioCollector", lambda *a, **k: made.append(a) or real(*a, **k))
    record = decode(media / "tone.mp4", BuildConfig.model_validate({"asr": {"enabled": False}}))
    assert record.ok and record.has_audio is True and record.audio_pcm is None
    assert made == [], "the audio stream is not even demuxed"
    assert decode(media / "tone.mp4").audio_pcm is not None and made
