"""One pyarrow schema per output table. Writers build tables with these and tests check them."""

from __future__ import annotations

import pyarrow as pa

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_index", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),
        pa.field("has_audio", pa.bool_()),
        pa.field("video_codec", pa.string()),
        pa.field("file_size", pa.int64()),
        pa.field("language", pa.string()),
        # The Ray node that ran the video stage (download + decode) for it; null where no stage ran.
        pa.field("node_id", pa.string()),
        pa.field("n_clips", pa.int32(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("n_segments", pa.int32(), nullable=False),
        # Seconds per stage, {"download": 1.2, "decode": 3.4, ...}.
        pa.field("timings", pa.map_(pa.string(), pa.float64())),
        # Filter counts, {"dropped_low_similarity": 2, ...}.
        pa.field("counters", pa.map_(pa.string(), pa.int64())),
    ]
)

CLIPS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip_idx", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("boundary", pa.string(), nullable=False),
        # Which detector found the boundary and its score (schemas/records.py Clip); null where none did.
        pa.field("boundary_detector", pa.string()),
        pa.field("boundary_score", pa.float64()),
    ]
)

FRAMES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip_idx", pa.int32(), nullable=False),
        pa.field("frame_idx", pa.int32(), nullable=False),
        pa.field("t_s", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("caption", pa.string()),
    ]
)

TRANSCRIPTS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("seg_idx", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("avg_logprob", pa.float64()),
        pa.field("no_speech_prob", pa.float64()),
    ]
)

IMAGE_INFO = pa.struct(
    [
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("frame_idx", pa.int32(), nullable=False),
        pa.field("t_s", pa.float64(), nullable=False),
        pa.field("matched_text_index", pa.int32(), nullable=False),
        pa.field("matched_sim", pa.float64(), nullable=False),
    ]
)

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("text_list", pa.list_(pa.string()), nullable=False),
        pa.field("sentence_start_s", pa.list_(pa.float64()), nullable=False),
        pa.field("sentence_end_s", pa.list_(pa.float64()), nullable=False),
        pa.field("sentence_source", pa.list_(pa.string()), nullable=False),
        pa.field("image_info", pa.list_(IMAGE_INFO), nullable=False),
        pa.field("similarity_matrix", pa.list_(pa.list_(pa.float64())), nullable=False),
        pa.field("assignment", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "clips": CLIPS,
    "frames": FRAMES,
    "transcripts": TRANSCRIPTS,
    "documents": DOCUMENTS,
}
