"""One raw webdataset sample of a layout -> media (frames as PIL images) and text with media marks.

cosmo follows COSMO's interleaved-video loader: json["clips"] is a JSON string of
[{"clip": "H:MM:SS - H:MM:SS", "caption": ...}] in whole seconds of the source; a time t is frame
int(t / video_speed x avg_fps) of the mp4 (video_speed from the json, 5 in COSMO's data); the
range is kept inside the video, cut in frames_per_clip equal parts and one frame drawn per part; a
window of max_media adjacent clips is drawn; text "<visual>{caption}<|endofchunk|>" per clip.
mp4s are read with PyAV, imported when a cosmo sample is read (mmc4 and native training need none).

mmc4 and native follow OpenFlamingo's MMC4 loader: images of min_image_kb or less and those whose
matched_sim is under sim_threshold are dropped, at most max_media kept in order, and
"<|endofchunk|><image>" goes before each image's matched sentence (the first <|endofchunk|> dropped).
native reads the keyframes from its {k}.jpg members instead of base64.

Any failure raises BadSample; the stream counts and skips it.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass

from PIL import Image

from cosmo_data.schemas.corpus_layout import COSMO_VIDEO_SPEED
from cosmo_data.train.config import DataConfig
from cosmo_data.train.weights import END_OF_CHUNK, IMAGE_TOKEN, VISUAL_TOKEN

# Why a sample was skipped, as counted per source in the stream's position and in metrics.jsonl.
SKIP_REASONS = ("broken_shard", "too_large", "bad_metadata", "unreadable_media", "no_media")


class BadSample(Exception):
    """A sample that cannot be trained on, with its reason (one of SKIP_REASONS)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Example:
    media: list[list[Image.Image]]  # per media its frames (one for an image)
    text: str  # with one media mark per media, in order


def _seconds(stamp: str) -> int:
    return sum(int(part) * 60**power for power, part in enumerate(reversed(stamp.strip().split(":"))))


def clip_frame_indices(
    start_s: int, end_s: int, speed: float, fps: float, n_frames: int, count: int, rng: random.Random
) -> list[int]:
    """COSMO's frame choice for one clip string (see the module docstring)."""
    if start_s > end_s:
        start_s = end_s - 2
    begin, end = int(start_s / speed * fps), int(end_s / speed * fps)
    distance = end - begin
    if begin < 0:
        begin, end = 0, end + distance
    if end >= n_frames:
        end = n_frames - 1
        begin = max(end - distance, 0)
    if end < begin:
        raise BadSample(f"clip {start_s}-{end_s} s lies outside the video's {n_frames} frames", "unreadable_media")
    bounds = [begin + (end - begin) * k // count for k in range(count + 1)]
    return [rng.randrange(low, high) if high > low else low for low, high in zip(bounds[:-1], bounds[1:])]


def video_info(data: bytes) -> tuple[float, int]:
    """(average fps, frame count) of an mp4 from its header, or by counting packets where it has none."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            return fps, count
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise BadSample(f"unreadable mp4: {exc}", "unreadable_media") from exc


def read_video_frames(data: bytes, wanted: set[int]) -> dict[int, Image.Image]:
    """{index: frame} for the wanted frame indices of an mp4, decoding up to the last of them."""
    import av

    frames: dict[int, Image.Image] = {}
    try:
        with av.open(io.BytesIO(data)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames[index] = frame.to_image()
                if index >= max(wanted):
                    break
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise BadSample(f"unreadable mp4: {exc}", "unreadable_media") from exc
    return frames


def cosmo_example(sample: dict[str, bytes], data: DataConfig, rng: random.Random) -> Example:
    try:
        meta = json.loads(sample["json"])
        clips = json.loads(meta["clips"])
        speed = float(meta.get("video_speed", COSMO_VIDEO_SPEED))
        spans = [tuple(_seconds(part) for part in clip["clip"].split(" - ")) for clip in clips]
        captions = [str(clip["caption"]) for clip in clips]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadSample(f"bad cosmo json: {exc!r}", "bad_metadata") from exc
    if "mp4" not in sample or not clips:
        raise BadSample("cosmo sample without mp4 or clips", "no_media")
    first = rng.randrange(len(clips) - data.max_media + 1) if len(clips) > data.max_media else 0
    window = range(first, min(first + data.max_media, len(clips)))
    fps, n_frames = video_info(sample["mp4"])
    if fps <= 0 or n_frames <= 0:
        raise BadSample("mp4 without frames", "unreadable_media")
    indices = {k: clip_frame_indices(*spans[k], speed, fps, n_frames, data.frames_per_clip, rng) for k in window}
    frames = read_video_frames(sample["mp4"], {i for chosen in indices.values() for i in chosen})
    try:
        media = [[frames[i] for i in indices[k]] for k in window]
    except KeyError as exc:
        raise BadSample(f"mp4 ends before frame {exc}", "unreadable_media") from exc
    text = "".join(f"{VISUAL_TOKEN}{captions[k].strip()}{END_OF_CHUNK}" for k in window)
    return Example(media, text)


def _jpeg(raw: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadSample(f"unreadable image: {exc}", "unreadable_media") from exc


def _interleave(meta: dict, images: list[bytes | None], data: DataConfig) -> Example:
    """OpenFlamingo's MMC4 interleaving of images at their matched sentences."""
    sentences = [str(text) for text in meta["text_list"]]
    kept: list[tuple[Image.Image, int]] = []
    for entry, raw in zip(meta["image_info"], images):
        if raw is None or len(raw) // 1000 <= data.min_image_kb or entry.get("matched_sim", 1.0) < data.sim_threshold:
            continue
        kept.append((_jpeg(raw), int(entry["matched_text_index"])))
        if len(kept) == data.max_media:
            break
    if not kept:
        raise BadSample("no image passes the size and similarity thresholds", "no_media")
    for _, sentence_index in kept:
        sentences[sentence_index] = f"{END_OF_CHUNK}{IMAGE_TOKEN}{sentences[sentence_index]}"
    text = " ".join(sentences).replace(END_OF_CHUNK, "", 1)
    text = (
        text.replace(f" {END_OF_CHUNK}", END_OF_CHUNK)
        .replace(f"{IMAGE_TOKEN} ", IMAGE_TOKEN)
        .replace(f" {IMAGE_TOKEN}", IMAGE_TOKEN)
    )
    return Example([[image] for image, _ in kept], f"{text}{END_OF_CHUNK}")


def mmc4_example(sample: dict[str, bytes], data: DataConfig, rng: random.Random) -> Example:
    try:
        meta = json.loads(sample["json"])
        images = [
            base64.b64decode(entry["image_base64"]) if "image_base64" in entry else None for entry in meta["image_info"]
        ]
        return _interleave(meta, images, data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BadSample(f"bad mmc4 json: {exc!r}", "bad_metadata") from exc


def native_example(sample: dict[str, bytes], data: DataConfig, rng: random.Random) -> Example:
    try:
        meta = json.loads(sample["json"])
        images = [sample.get(entry["image_name"]) for entry in meta["image_info"]]
        return _interleave(meta, images, data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BadSample(f"bad native json: {exc!r}", "bad_metadata") from exc


DECODERS = {"cosmo": cosmo_example, "mmc4": mmc4_example, "native": native_example}
