"""Odd media for tests: audio without video, one frame, rotation, variable frame rate, a file cut short."""

from __future__ import annotations

from pathlib import Path

from cosmo_data.pipeline.generated_media import AUDIO_RATE, file_arg, run_ffmpeg


def make_audio_only(path: Path, duration_s: float = 2.0) -> Path:
    """An audio file with no video stream (the codec follows the suffix: .m4a/.mp4 AAC, .wav PCM)."""
    codec = ["-c:a", "pcm_s16le"] if path.suffix.lower() == ".wav" else ["-c:a", "aac", "-b:a", "64k"]
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=330:sample_rate={AUDIO_RATE}:duration={duration_s}",
            *codec,
            file_arg(path),
        ]
    )
    return path


def make_single_frame_video(path: Path, size: tuple[int, int] = (320, 240)) -> Path:
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size[0]}x{size[1]}:rate=25",
            "-frames:v",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            file_arg(path),
        ]
    )
    return path


def make_rotated_copy(source: Path, target: Path, rotation: int) -> Path:
    """Stream-copy `source` with a display matrix asking players to turn it by `rotation` degrees."""
    run_ffmpeg(["-i", file_arg(source), "-c", "copy", "-metadata:s:v:0", f"rotate={rotation}", file_arg(target)])
    return target


def make_vfr_video(path: Path, size: tuple[int, int] = (160, 120), duration_s: float = 3.0) -> Path:
    """Variable frame rate: 30 fps for the first second, then every third frame (10 fps)."""
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size[0]}x{size[1]}:rate=30:duration={duration_s}",
            "-vf",
            "select='lt(t\\,1)+not(mod(n\\,3))'",
            "-fps_mode",
            "vfr",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            file_arg(path),
        ]
    )
    return path


def truncate_copy(source: Path, target: Path, keep_fraction: float) -> Path:
    """The first `keep_fraction` of source's bytes, like an interrupted download."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep_fraction)])
    return target
