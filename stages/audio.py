"""The audio of the decode pass: 16 kHz mono s16 PCM on the video's timeline."""

from __future__ import annotations

import av

AUDIO_RATE = 16000
# Decoded audio waits in the FIFO until there is this much of it (seconds).
AUDIO_CHUNK_S = 5


class AudioCollector:
    """Decodes the audio packets of the same demux pass into 16 kHz mono s16, aligned to time 0.

    Decoded frames (about 1000 samples each) gather in a FIFO and are resampled a few seconds at a
    time: one resampler call per frame cost twice as much as decoding the audio.
    """

    def __init__(self, origin_s: float):
        self._origin_s = origin_s
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._fifo = av.AudioFifo()
        self._pcm = bytearray()
        self._started = False

    def add_packet(self, packet: av.Packet) -> None:
        try:
            frames = packet.decode()
        except av.FFmpegError:
            return  # a damaged audio packet costs its few milliseconds, not the video
        for frame in frames:
            if not self._started:
                self._align_start(frame)
            frame.pts = None  # the FIFO would refuse a gap in timestamps; samples simply follow on
            self._fifo.write(frame)
            if self._fifo.samples >= AUDIO_CHUNK_S * frame.sample_rate:
                self._resample(self._fifo.read())

    def pcm(self) -> bytes:
        if self._fifo.samples:
            self._resample(self._fifo.read())
        self._resample(None)
        return bytes(self._pcm)

    def _align_start(self, frame: av.AudioFrame) -> None:
        """Sample 0 is time 0: pad with silence when audio starts late (a late start shifts ASR)."""
        self._started = True
        if frame.time is not None:
            lead_samples = round((frame.time - self._origin_s) * AUDIO_RATE)
            if lead_samples > 0:
                self._pcm.extend(bytes(2 * lead_samples))

    def _resample(self, frame: av.AudioFrame | None) -> None:
        for resampled in self._resampler.resample(frame):
            # Mono s16 is one packed plane; its buffer may be padded past the last sample.
            self._pcm.extend(memoryview(resampled.planes[0])[: resampled.samples * 2])
