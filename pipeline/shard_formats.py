"""Webdataset samples per shard format. Each function maps one finished record to one sample dict
({"__key__": ..., "<ext>": bytes}) or None when the record has nothing for that format."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import av

from cosmo_data.schemas.records import Clip, Sentence, VideoRecord

# COSMO's webdataset loader divides every clip time by video_speed=5 (its HowTo100M mp4s were sped up
# 5x), so the cosmo mp4 is written 5x faster than real time and the clip times stay real seconds.
COSMO_VIDEO_SPEED = 5


class ShardFormatError(Exception):
    """A record that cannot be written in a format (the message names the source, not temp files)."""


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")


def native_sample(record: VideoRecord) -> dict[str, bytes] | None:
    """`{key}.json` with the document and its metadata, plus `{key}.{k}.jpg` per keyframe."""
    if not record.ok or not record.frames:
        return None
    document = record.document
    meta: dict[str, object] = {
        "doc_id": document.doc_id if document else record.video_id,
        "video_id": record.video_id,
        "source": record.source,
        "duration_s": record.duration_s,
        "language": record.language,
        "clips": [
            {"clip_idx": c.clip_idx, "start_s": c.start_s, "end_s": c.end_s, "boundary": c.boundary}
            for c in record.clips
        ],
        "frames": [
            {
                "image_name": f"{k}.jpg",
                "frame_idx": f.frame_idx,
                "clip_idx": f.clip_idx,
                "t_s": f.t_s,
                "width": f.width,
                "height": f.height,
                "caption": f.caption,
            }
            for k, f in enumerate(record.frames)
        ],
    }
    if document is not None:
        meta.update(
            text_list=[s.text for s in document.sentences],
            sentences=[
                {"text": s.text, "start_s": s.start_s, "end_s": s.end_s, "source": s.source} for s in document.sentences
            ],
            image_info=record.image_info(),
            similarity_matrix=document.similarity,
            assignment=document.assignment,
            n_tokens=document.n_tokens,
        )
    sample: dict[str, bytes] = {"__key__": str(meta["doc_id"]), "json": _json_bytes(meta)}
    for k, frame in enumerate(record.frames):
        sample[f"{k}.jpg"] = frame.jpeg
    return sample


def mmc4_sample(record: VideoRecord) -> dict[str, bytes] | None:
    """`{key}.json` in the MMC4 document layout that OpenFlamingo's get_mmc4_dataset reads unchanged.

    text_list, image_info [{image_name, matched_text_index, matched_sim, image_base64}] and
    similarity_matrix [images][sentences] as in MMC4; image_base64 is the keyframe JPEG, image_name the
    native member name. Extra keys (doc_id, video_id, url, frame_idx, t_s, assignment) are ignored there.
    OpenFlamingo itself skips images under 11 KB and below its own similarity threshold; its later
    versions recompute the assignment from similarity_matrix with linear_sum_assignment, which gives
    matched_text_index back for "mmc4" documents but not for "time"/"ordered" ones.
    """
    document = record.document
    if not record.ok or document is None or not document.image_frames:
        return None
    info = {
        "doc_id": document.doc_id,
        "video_id": record.video_id,
        "url": record.source,
        "text_list": [s.text for s in document.sentences],
        "image_info": [
            {**entry, "image_base64": base64.b64encode(record.frames[frame_index].jpeg).decode("ascii")}
            for frame_index, entry in zip(document.image_frames, record.image_info())
        ],
        "similarity_matrix": document.similarity,
        "assignment": document.assignment,
    }
    return {"__key__": document.doc_id, "json": _json_bytes(info)}


def cosmo_sample(record: VideoRecord) -> dict[str, bytes] | None:
    """`{key}.mp4` + `{key}.json` as COSMO's InterleaveVideoTextWDSDataset reads them unchanged.

    Its pipeline is decode(decord) -> to_tuple("mp4", "json") -> json["clips"] is itself a JSON string
    of [{"clip": "H:MM:SS - H:MM:SS", "caption": ...}], clip times in whole seconds of one mp4 that it
    reads at time / video_speed (5). So: clips that have an mp4 and some text are joined into one video
    (stream copy, no audio, timestamps divided by 5), and their times are given on that joined timeline,
    rounded to whole seconds. A clip's caption is every document sentence whose middle falls in it.
    Differs from Howto-Interlink7M: captions are our keyframe captions and speech, not LLM summaries.
    """
    document = record.document
    if not record.ok or document is None or not record.clip_videos:
        return None
    clips = sorted((c for c in record.clips if c.clip_idx in record.clip_videos), key=lambda c: c.clip_idx)
    chosen = [(clip, text) for clip, text in zip(clips, clip_captions(document.sentences, clips)) if text]
    if not chosen:
        return None
    videos = [record.clip_videos[clip.clip_idx] for clip, _ in chosen]
    entries = []
    start = 0.0
    for (_, text), video in zip(chosen, videos):
        end = start + _duration_s(video, record.source)
        first, last = int(start + 0.5), int(end + 0.5)
        entries.append({"clip": f"{_hms(first)} - {_hms(max(last, first + 1))}", "caption": text})
        start = end
    meta = {
        "doc_id": document.doc_id,
        "video_id": record.video_id,
        "url": record.source,
        "clips": json.dumps(entries, ensure_ascii=False),
        "video_speed": COSMO_VIDEO_SPEED,
        "source_clips": [{"clip_idx": c.clip_idx, "start_s": c.start_s, "end_s": c.end_s} for c, _ in chosen],
    }
    return {"__key__": document.doc_id, "json": _json_bytes(meta), "mp4": join_clips(videos, record.source)}


def clip_captions(sentences: list[Sentence], clips: list[Clip]) -> list[str]:
    """Per clip, the sentences whose midpoint lies in [start, end), joined in document order."""
    texts: list[list[str]] = [[] for _ in clips]
    for sentence in sentences:
        middle = (sentence.start_s + sentence.end_s) / 2
        for k, clip in enumerate(clips):
            if clip.start_s <= middle < clip.end_s or (k == len(clips) - 1 and middle == clip.end_s):
                texts[k].append(sentence.text)
                break
    return [" ".join(t) for t in texts]


def _hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _duration_s(mp4: bytes, source: str) -> float:
    """The container duration, which is what ffmpeg's concat demuxer offsets the next clip by."""
    try:
        with av.open(io.BytesIO(mp4)) as container:
            if container.duration is None:
                raise ShardFormatError(f"cosmo: a clip mp4 of {source} has no duration")
            return container.duration / av.time_base
    except av.FFmpegError as exc:
        raise ShardFormatError(f"cosmo: a clip mp4 of {source} does not open: {exc}") from exc


def join_clips(videos: list[bytes], source: str) -> bytes:
    """One mp4 of the clips' video streams back to back, COSMO_VIDEO_SPEED times faster; no re-encode."""
    speed = COSMO_VIDEO_SPEED
    with tempfile.TemporaryDirectory(prefix="cosmo-join-") as tmp:
        folder = Path(tmp)
        names = []
        for k, video in enumerate(videos):
            names.append(f"clip{k:05d}.mp4")
            (folder / names[-1]).write_bytes(video)
        (folder / "clips.txt").write_text("".join(f"file '{name}'\n" for name in names))
        command = [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "concat",
            "-i",
            str(folder / "clips.txt"),
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-an",
            "-bsf:v",
            f"setts=pts=PTS/{speed}:dts=DTS/{speed}:duration=DURATION/{speed}",
            "-movflags",
            "+faststart",
            str(folder / "joined.mp4"),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            message = result.stderr.strip().replace(str(folder), source) or f"ffmpeg exited with {result.returncode}"
            raise ShardFormatError(f"cosmo: joining the clips of {source} failed: {message}")
        return (folder / "joined.mp4").read_bytes()


SAMPLE_WRITERS: dict[str, Callable[[VideoRecord], dict[str, bytes] | None]] = {
    "native": native_sample,
    "mmc4": mmc4_sample,
    "cosmo": cosmo_sample,
}
