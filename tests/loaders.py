"""Readers written to what the trainers' own loaders expect of our shards (used by tests only).

openflamingo_mmc4: mlfoundations/open_flamingo open_flamingo/train/data.py, get_mmc4_dataset +
preprocess_interleaved: tar -> to_tuple("json") -> json.loads -> per image_info entry, base64 JPEG,
images of 10 KB or less skipped, matched_sim below sim_threshold skipped; "<|endofchunk|><image>"
put before the matched sentence, sentences joined by spaces, first <|endofchunk|> removed, whitespace
around the tokens removed, at most 5 images, zero-padded. recompute_assignment=True follows its later
version, which ignores matched_text_index and runs linear_sum_assignment on similarity_matrix.
Left out: the random augmentations (media shift, random drop of one-image samples, horizontal flip)
and tokenization, so the text is returned as a string.

cosmo_interleaved_video: showlab/cosmo src/data/interlevel_video_text_dataset_wds.py and
BaseDataset.preprocess_interleaved_video_wds: decode mp4 members with decord (256x256) -> to_tuple("mp4",
"json") -> json["clips"] parsed again as JSON -> each "H:MM:SS - H:MM:SS" summed as integers, divided by
video_speed=5 -> frame indices int(t * avg_fps), sampled in num_frames equal ranges. Left out: picking 3
adjacent clips at random (every clip is read), the video augmentations and tokenization.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import decord
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from scipy.optimize import linear_sum_assignment
from torchvision import transforms

MIN_KB = 10
MAX_NUM_IMAGES = 5
IMAGE_SIZE = 224
COSMO_VIDEO_SPEED = 5
COSMO_FRAME_SIZE = 256

# CLIP's preprocessing, as OpenFlamingo's image_processor does it.
_clip_transform = transforms.Compose(
    [
        transforms.Resize(IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(IMAGE_SIZE),
        transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ]
)


@dataclass
class InterleavedExample:
    images: torch.Tensor  # [MAX_NUM_IMAGES, 3, 224, 224], zero rows after the real images
    n_images: int
    text: str


def _tidy(text: str, media_token: str) -> str:
    """Both loaders' whitespace cleanup around the special tokens."""
    text = text.replace(" <|endofchunk|>", "<|endofchunk|>")
    return text.replace(f"{media_token} ", media_token).replace(f" {media_token}", media_token)


def _interleave(info: dict, sim_threshold: float, recompute_assignment: bool) -> InterleavedExample:
    sentences = list(info["text_list"])
    decoded = []
    for position, entry in enumerate(info["image_info"]):
        if "image_base64" not in entry:
            continue
        raw = base64.b64decode(entry["image_base64"])
        if len(raw) // 1000 <= MIN_KB:
            continue
        decoded.append((position, Image.open(io.BytesIO(raw)).convert("RGB")))

    if recompute_assignment:
        if not decoded:
            raise ValueError("No images in sample")
        sim = np.array(info["similarity_matrix"])[[position for position, _ in decoded]]
        rows, cols = linear_sum_assignment(-sim)
        pairs = [(decoded[r][1], int(c)) for r, c in zip(rows, cols) if sim[r, c] >= sim_threshold]
    else:
        pairs = [
            (image, info["image_info"][position]["matched_text_index"])
            for position, image in decoded
            if info["image_info"][position]["matched_sim"] >= sim_threshold
        ]
    if not pairs:
        raise ValueError("No images in sample")

    pairs = pairs[:MAX_NUM_IMAGES]
    images = torch.stack([_clip_transform(image) for image, _ in pairs])
    padding = torch.zeros((MAX_NUM_IMAGES - len(pairs), 3, IMAGE_SIZE, IMAGE_SIZE))
    for _, sentence_index in pairs:
        sentences[sentence_index] = f"<|endofchunk|><image>{sentences[sentence_index]}"
    text = " ".join(sentences).replace("<|endofchunk|>", "", 1)
    text = _tidy(text, "<image>")
    return InterleavedExample(torch.cat([images, padding]), len(pairs), f"{text}<|endofchunk|></s>")


def openflamingo_mmc4(
    urls: list[str], sim_threshold: float = 0.0, recompute_assignment: bool = False
) -> Iterator[InterleavedExample]:
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(),
        wds.to_tuple("json"),
        wds.map(lambda sample: _interleave(json.loads(sample[0]), sim_threshold, recompute_assignment)),
    )
    return iter(pipeline)


@dataclass
class VideoClipExample:
    times_s: list[tuple[float, float]]  # what the loader seeks to, in seconds of the mp4
    captions: list[str]
    frames: list[np.ndarray]  # per clip [num_frames, 256, 256, 3] uint8
    text: str
    possible_frames: list[np.ndarray]  # per clip, every frame a draw could have taken


def _decord_video(key: str, data: bytes):
    if re.sub(r".*[.]", "", key) not in "mp4 ogv mjpeg avi mov h264 mpg webm wmv".split():
        return None
    return decord.VideoReader(
        io.BytesIO(data), width=COSMO_FRAME_SIZE, height=COSMO_FRAME_SIZE, num_threads=1, ctx=decord.cpu(0)
    )


def _seconds(hms: str) -> int:
    return sum(int(part) * 60**power for power, part in enumerate(reversed(hms.split(":"))))


def _frame_parts(num_frames: int, n_frames: int, begin: int, end: int) -> list[tuple[int, int]]:
    """COSMO's sample_frames_from_seq up to its draw: the range kept inside the video, cut in equal parts,
    each part (low, high) drawn from as random.choice(range(low, high)), or low where high <= low."""
    distance = end - begin
    if begin < 0:
        begin, end = 0, end + distance
    if end >= n_frames:
        end = n_frames - 1
        begin = end - distance
    if end < begin:
        raise ValueError("Begin index larger than end index.")
    bounds = np.linspace(begin, end, num_frames + 1).astype(int)
    return [(int(low), int(high)) for low, high in zip(bounds[:-1], bounds[1:] - 1)]


def _frame_indices(num_frames: int, n_frames: int, begin: int, end: int, rng: random.Random) -> list[int]:
    """One random frame per part, as COSMO draws them."""
    parts = _frame_parts(num_frames, n_frames, begin, end)
    return sorted(rng.choice(range(low, high)) if high > low else low for low, high in parts)


def _possible_indices(num_frames: int, n_frames: int, begin: int, end: int) -> list[int]:
    """Every frame any draw could take."""
    parts = _frame_parts(num_frames, n_frames, begin, end)
    return sorted({i for low, high in parts for i in (range(low, high) if high > low else [low])})


def _video_clips(data: tuple, num_frames: int, rng: random.Random) -> VideoClipExample:
    reader, info = data
    clips = json.loads(info["clips"])
    fps = reader.get_avg_fps()
    times, captions, frames, possible = [], [], [], []
    for clip in clips:
        start, end = (_seconds(part) for part in clip["clip"].split(" - "))
        if start > end:
            start = end - 2
        begin_s, end_s = float(start) / COSMO_VIDEO_SPEED, float(end) / COSMO_VIDEO_SPEED
        begin, stop = int(begin_s * fps), int(end_s * fps)
        frames.append(reader.get_batch(_frame_indices(num_frames, len(reader), begin, stop, rng)).asnumpy())
        possible.append(reader.get_batch(_possible_indices(num_frames, len(reader), begin, stop)).asnumpy())
        times.append((begin_s, end_s))
        captions.append(clip["caption"])
    text = "<s>" + "".join(f"<visual>{caption}<|endofchunk|>" for caption in captions)
    text = _tidy(text, "<visual>")
    return VideoClipExample(times, captions, frames, f"{text}</s>", possible)


def cosmo_interleaved_video(urls: list[str], num_frames: int = 3, seed: int = 0) -> Iterator[VideoClipExample]:
    rng = random.Random(seed)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(),
        wds.decode(_decord_video),
        wds.to_tuple("mp4", "json"),
        wds.map(lambda sample: _video_clips(sample, num_frames, rng)),
    )
    return iter(pipeline)
