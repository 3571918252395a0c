"""Webdataset samples per shard format. Each function maps one finished record to one sample dict
({"__key__": ..., "<ext>": bytes}) or None when the record has nothing for that format."""

from __future__ import annotations

import json
from collections.abc import Callable

from cosmo_data.pipeline.record import VideoRecord


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
            {"image_name": f"{k}.jpg", "frame_idx": f.frame_idx, "clip_idx": f.clip_idx, "t_s": f.t_s,
             "width": f.width, "height": f.height, "caption": f.caption}
            for k, f in enumerate(record.frames)
        ],
    }
    if document is not None:
        meta.update(
            text_list=[s.text for s in document.sentences],
            sentences=[
                {"text": s.text, "start_s": s.start_s, "end_s": s.end_s, "source": s.source}
                for s in document.sentences
            ],
            image_info=[
                {"image_name": f"{frame_index}.jpg", "frame_idx": record.frames[frame_index].frame_idx,
                 "t_s": record.frames[frame_index].t_s, "matched_text_index": text_index, "matched_sim": sim}
                for frame_index, text_index, sim in zip(
                    document.image_frames, document.matched_text_index, document.matched_sim
                )
            ],
            similarity_matrix=document.similarity,
            assignment=document.assignment,
            n_tokens=document.n_tokens,
        )
    sample: dict[str, bytes] = {"__key__": str(meta["doc_id"]), "json": _json_bytes(meta)}
    for k, frame in enumerate(record.frames):
        sample[f"{k}.jpg"] = frame.jpeg
    return sample


SAMPLE_WRITERS: dict[str, Callable[[VideoRecord], dict[str, bytes] | None]] = {
    "native": native_sample,
}
