"""The audio of the decode pass: 16 kHz mono s16 PCM on the video's timeline (sample n at n / 16000 s)."""

from __future__ import annotations

import av

AUDIO_RATE = 16000
# Decoded audio waits in the FIFO until there is this much of it (seconds).
AUDIO_CHUNK_S = 5
# A frame this much later than the audio so far (a dropped or undecodable packet, a jump in the
# timestamps) is preceded by silence; less is timestamp rounding (Matroska's are milliseconds).
GAP_TOLERANCE_S = 0.005
# Silence for a gap goes into the FIFO in pieces of at most this many seconds.
SILENCE_PIECE_S = 1.0


class AudioCollector:
    """Decodes the audio packets of the same demux pass into 16 kHz mono s16, aligned to time 0.

    Decoded frames (about 1000 samples each) gather in a FIFO and are resampled a few seconds at a
    time: one resampler call per frame cost twice as much as decoding the audio. The timeline is kept:
    silence fills a late start and every gap, so a damaged stretch never pulls later speech earlier.
    Gaps are filled up to end_s at most (the header's length, when it gives one).
    """

    def __init__(self, origin_s: float, end_s: float | None = None):
        self._origin_s = origin_s
        self._end_s = end_s
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._fifo = av.AudioFifo()
        self._pcm = bytearray()
        self._started = False
        # Where the next sample written belongs, in seconds from the video's start.
        self._next_s = 0.0

    def add_packet(self, packet: av.Packet) -> None:
        try:
            frames = packet.decode()
        except av.FFmpegError:
            return  # a damaged packet: the next frame's timestamp tells how long a silence replaces it
        for frame in frames:
            at_s = frame.time - self._origin_s if frame.time is not None else None
            if not self._started:
                self._align_start(at_s)
            elif at_s is not None and at_s - self._next_s > GAP_TOLERANCE_S:
                self._fill_gap(frame, at_s)
            self._next_s += frame.samples / frame.sample_rate
            frame.pts = None  # the FIFO would refuse a gap in timestamps; the gap is filled above
            self._write(frame)

    def pcm(self) -> bytes:
        if self._fifo.samples:
            self._resample(self._fifo.read())
        self._resample(None)
        return bytes(self._pcm)

    def _align_start(self, at_s: float | None) -> None:
        """Sample 0 is time 0: pad with silence when audio starts late (a late start shifts ASR)."""
        self._started = True
        if at_s is None:
            return
        lead_samples = round(at_s * AUDIO_RATE)
        if lead_samples > 0:
            self._pcm.extend(bytes(2 * lead_samples))
        self._next_s = at_s

    def _fill_gap(self, frame: av.AudioFrame, at_s: float) -> None:
        """Silence in the frame's own format from where the audio got to up to the frame's time."""
        until_s = at_s if self._end_s is None else min(at_s, self._end_s)
        rate = frame.sample_rate
        missing = round((until_s - self._next_s) * rate)
        if missing <= 0:
            return
        self._next_s += missing / rate
        fill = 0x80 if frame.format.name in ("u8", "u8p") else 0  # unsigned 8-bit silence is the middle
        while missing > 0:
            samples = min(missing, int(SILENCE_PIECE_S * rate))
            silence = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=samples)
            for plane in silence.planes:
                plane.update(bytes([fill]) * plane.buffer_size)
            silence.sample_rate = rate
            self._write(silence)
            missing -= samples

    def _write(self, frame: av.AudioFrame) -> None:
        self._fifo.write(frame)
        if self._fifo.samples >= AUDIO_CHUNK_S * frame.sample_rate:
            self._resample(self._fifo.read())

    def _resample(self, frame: av.AudioFrame | None) -> None:
        for resampled in self._resampler.resample(frame):
            # Mono s16 is one packed plane; its buffer may be padded past the last sample.
            self._pcm.extend(memoryview(resampled.planes[0])[: resampled.samples * 2])
