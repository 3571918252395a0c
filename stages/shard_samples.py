"""Every shard layout's sample of a finished record, made on the worker as tar members and staged there as
one object per video (stage_part) under the output group's staging folder: the driver never encodes, joins,
base64s or even receives a shard byte (HowTo100M-size builds pull records from Ray while it writes). A
worker concatenates a finished group's parts into its tars (pipeline/writer.py, write_shards).

Each layout function maps one finished record to one sample dict ({"__key__": ..., "<ext>": bytes}) or
None when the record has nothing for that layout. Every document is in every layout or in none, so a
record that one layout cannot hold is filtered: trainers mixing layouts see one corpus.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import tarfile
from collections.abc import Callable

from cosmo_data.models.gpt2_tokens import fit_tokens, gpt2_encoding
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.corpus_layout import COSMO_CAPTION_TOKENS, COSMO_VIDEO_SPEED, hms
from cosmo_data.schemas.records import (
    DISK_FULL,
    SHARD_FAILED,
    STORAGE_FAILED,
    Clip,
    Sentence,
    ShardPart,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.schemas.redact import redact
from cosmo_data.stages.base import describe_exception, process_each, resources_from
from cosmo_data.stages.curation import filter_video
from cosmo_data.storage import StorageError, location, write_atomic

# Shards are byte-identical across reruns: fixed member metadata, members in a fixed order.
TAR_MTIME = 0
TAR_BLOCK = tarfile.BLOCKSIZE


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
        "source": redact(record.source),
        "duration_s": record.duration_s,
        "language": record.language,
        "clips": [
            {"clip_idx": c.clip_idx, "start_s": c.start_s, "end_s": c.end_s, "boundary": c.boundary}
            for c in record.clips
        ],
        "frames": [
            {
                "image_name": f"{f.frame_idx}.jpg",
                "frame_idx": f.frame_idx,
                "clip_idx": f.clip_idx,
                "t_s": f.t_s,
                "width": f.width,
                "height": f.height,
                "caption": f.caption,
            }
            for f in record.frames
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
    # Named by frame_idx, which stays the keyframe's number where curation filtered others.
    for frame in record.frames:
        sample[f"{frame.frame_idx}.jpg"] = frame.jpeg
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
        "url": redact(record.source),
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
    of [{"clip": "H:MM:SS - H:MM:SS", "caption": ...}], whole seconds of the source that it reads at
    time / video_speed (5) x the mp4's frame rate. The mp4 is the video's cosmo video (constant frame
    rate, sped up 5x; stages/cosmo_video.py) and each clip is listed under the whole seconds that lie
    inside it, so every frame the loader takes for a clip is one of the clip's own. A clip's caption is
    the document sentences whose middle falls in it, as many as fit COSMO's budget of 3 clips in 128
    tokens (GPT-2 BPE, OPT's tokenizer); the whole text stays in the native layout and the tables.
    Differs from Howto-Interlink7M: captions are our keyframe captions and speech, not LLM summaries.
    """
    document, video = record.document, record.cosmo_video
    if not record.ok or document is None or video is None:
        return None
    clips = [clip for clip in record.clips if clip.clip_idx in video.spans]
    entries, source_clips = [], []
    for clip, sentences in zip(clips, clip_sentences(document.sentences, clips)):
        caption = fit_tokens(sentences, COSMO_CAPTION_TOKENS)
        if not caption:
            continue
        start, end = video.spans[clip.clip_idx]
        entries.append({"clip": f"{hms(start)} - {hms(end)}", "caption": caption})
        source_clips.append({"clip_idx": clip.clip_idx, "start_s": clip.start_s, "end_s": clip.end_s})
    if not entries:
        return None
    meta = {
        "doc_id": document.doc_id,
        "video_id": record.video_id,
        "url": redact(record.source),
        "clips": json.dumps(entries, ensure_ascii=False),
        "video_speed": COSMO_VIDEO_SPEED,
        "source_clips": source_clips,
        # Past this the mp4 repeats the video's last frame (stages/cosmo_video.py).
        "video_end_s": max(c.end_s for c in record.clips + record.filtered_clips),
    }
    return {"__key__": document.doc_id, "json": _json_bytes(meta), "mp4": video.mp4}


def clip_sentences(sentences: list[Sentence], clips: list[Clip]) -> list[list[str]]:
    """Per clip, the sentences whose midpoint lies in [start, end), in document order."""
    texts: list[list[str]] = [[] for _ in clips]
    for sentence in sentences:
        middle = (sentence.start_s + sentence.end_s) / 2
        for k, clip in enumerate(clips):
            if clip.start_s <= middle < clip.end_s or (k == len(clips) - 1 and middle == clip.end_s):
                texts[k].append(sentence.text)
                break
    return texts


SAMPLE_WRITERS: dict[str, Callable[[VideoRecord], dict[str, bytes] | None]] = {
    "native": native_sample,
    "mmc4": mmc4_sample,
    "cosmo": cosmo_sample,
}


def tar_members(sample: dict[str, bytes]) -> bytes:
    """The sample's tar members `<key>.<ext>`, header and padded data each, in a fixed order: a run of
    whole blocks that a tar of many samples is the concatenation of."""
    key = sample["__key__"]
    blocks = bytearray()
    for ext in sorted(k for k in sample if k != "__key__"):
        data = sample[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o444
        blocks += info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        blocks += data + bytes(-len(data) % TAR_BLOCK)
    return bytes(blocks)


def stage_part(folder: str, source_index: int, members: dict[str, bytes]) -> ShardPart:
    """Write one video's samples (each layout's tar members, back to back) as one object under its group's
    staging folder, whole or not at all. The name is the source index and a digest of the bytes: a retried
    task that makes the same samples writes the same object again, one that makes other samples (a
    deadline met on a busy node) writes its own, and the group takes exactly the part of the record the
    driver accepted; the others go with the folder."""
    data = b"".join(members.values())
    path = location(folder) / f"{source_index:09d}-{hashlib.sha256(data).hexdigest()[:16]}.part"
    write_atomic(path, data)
    spans, offset = {}, 0
    for fmt, blob in members.items():
        spans[fmt] = (offset, len(blob))
        offset += len(blob)
    return ShardPart(str(path), spans)


def staging_failure(exc: OSError | StorageError, folder: str) -> VideoFailure:
    """A full disk or quota (ENOSPC, EDQUOT: the usual "disk full" of a shared cluster) is DISK_FULL; any
    other storage error (S3's SlowDown, a network blip, EIO) is STORAGE_FAILED. Both are retryable."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return VideoFailure(DISK_FULL, f"no space left to stage the samples under {folder}: {exc.strerror or exc}")
    return VideoFailure(STORAGE_FAILED, f"cannot stage the samples under {folder}: {describe_exception(exc)}")


class ShardSamplesStage:
    """The last stage: each ok record's samples in every configured layout, as tar members staged as one
    object (stage_part) where the record's `staging` says. Then the pictures and the cosmo video, which
    the samples now hold, leave the record: the driver gets table rows and the part's name only."""

    name = "shard_samples"

    def __init__(self, config: BuildConfig):
        self.formats = list(config.output.formats)
        self.resources = resources_from(config.output.resources)
        self.batch_size = config.output.resources.batch_size

    def setup(self) -> None:
        gpt2_encoding()  # cosmo captions are cut to COSMO's token budget: its vocabulary loads once here

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_each(batch, self._make, stage=self.name, failure_status=SHARD_FAILED)

    def _make(self, record: VideoRecord) -> None:
        samples = {fmt: SAMPLE_WRITERS[fmt](record) for fmt in self.formats}
        empty = [fmt for fmt, sample in samples.items() if sample is None]
        if empty:
            # Filtered like any curation rule: the video keeps its rows and its document.
            filter_video(
                record, "output_empty_sample", f"document has nothing to write in the {', '.join(empty)} format"
            )
            return
        if record.staging is None:
            raise VideoFailure(SHARD_FAILED, "no staging folder for the samples (the build sets one per group)")
        members = {fmt: tar_members(sample) for fmt, sample in samples.items()}
        try:
            record.shard_part = stage_part(record.staging, record.source_index, members)
        except (OSError, StorageError) as exc:
            # The storage's failure, not the video's, after all its work: --retry-failed builds its group again.
            raise staging_failure(exc, record.staging) from exc
        record.cosmo_video = None
        for frame in record.frames:
            frame.jpeg = b""
