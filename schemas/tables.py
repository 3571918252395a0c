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
        # Curation (stages/curation.py): the rule that filtered the video (status "filtered"), and its
        # signals, kept whatever the verdict. Speech ones from ASR: the detected language's probability,
        # no-speech probability and average log-probability over the decoded windows (weighted by their
        # length), words spoken per second of video; audio_dbfs is the audio's RMS level, motion the
        # mean frame difference over the whole video (0..255).
        pa.field("filter_reason", pa.string()),
        pa.field("language_probability", pa.float64()),
        pa.field("no_speech_prob", pa.float64()),
        pa.field("avg_logprob", pa.float64()),
        pa.field("words_per_s", pa.float64()),
        pa.field("audio_dbfs", pa.float64()),
        pa.field("motion", pa.float64()),
        # Dedup: sha256 of the downloaded file (hex); for a duplicate (status "duplicate"), the video_id
        # of the copy kept and, from `cosmo-data dedup`, the cosine similarity of their keyframes.
        pa.field("content_hash", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("duplicate_similarity", pa.float64()),
        # The platform's metadata from yt-dlp's extraction (stages/platform_info.py); null for local
        # files. upload_date is YYYY-MM-DD; platform_language the language the platform gives the video
        # (language above is the transcript's); info_json the info dict minus formats and requests.
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("channel_id", pa.string()),
        pa.field("upload_date", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("license", pa.string()),
        pa.field("platform_language", pa.string()),
        pa.field("availability", pa.string()),
        pa.field("live_status", pa.string()),
        pa.field("age_limit", pa.int32()),
        pa.field("info_json", pa.string()),
        # The yt-dlp version that extracted the video, or failed to: a failure kind such as
        # extractor_broken is retried after an upgrade.
        pa.field("ytdlp_version", pa.string()),
    ]
)

# The platform's chapters of each video (yt-dlp's info dict), in order.
CHAPTERS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("chapter_idx", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
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
        # Curation: "ok" or "filtered" with the rule that filtered it; signals from the decode pass's
        # scene-detection frames (stages/frame_signals.py), on 0..255 grey levels: mean absolute
        # difference of consecutive frames, mean brightness, variance of the Laplacian (sharpness), the
        # share of consecutive frames that do not change (frozen).
        pa.field("status", pa.string()),
        pa.field("filter_reason", pa.string()),
        pa.field("motion", pa.float64()),
        pa.field("brightness", pa.float64()),
        pa.field("sharpness", pa.float64()),
        pa.field("frozen_fraction", pa.float64()),
        # Dedup (`cosmo-data dedup`): "<video_id>/<clip_idx>" of the near-duplicate clip kept, and the
        # cosine similarity of their keyframe embeddings.
        pa.field("duplicate_of", pa.string()),
        pa.field("duplicate_similarity", pa.float64()),
        # Narration (stages/narrate.py): "narrated", or why the clip kept its own sentences (bad_json,
        # wrong_clips, empty, too_short, too_long, unsupported_words, no_evidence, timeout, backend_error);
        # null where narration was off. narration: what the model wrote, passed or not.
        pa.field("narration_status", pa.string()),
        pa.field("narration", pa.string()),
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
        # Curation: "ok" or "filtered" with the rule that filtered it (its own or its clip's).
        pa.field("status", pa.string()),
        pa.field("filter_reason", pa.string()),
        # 64-bit DCT perceptual hash of the keyframe (stages/phash.py) as a signed int64.
        pa.field("phash", pa.int64()),
        # LAION's aesthetic score and NSFW probability from the keyframe's CLIP embedding.
        pa.field("aesthetic", pa.float64()),
        pa.field("nsfw", pa.float64()),
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
        # Where the text came from: platform_manual (an uploader's caption track), platform_auto (the
        # platform's speech recognition, original language), source (brought by the source list, e.g.
        # HowTo100M's raw_caption.json) or whisper.
        pa.field("text_source", pa.string()),
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
        # Curation: "ok" or "filtered" with the rule that filtered it; a document that is not "ok" has
        # no sample in the shards.
        pa.field("status", pa.string()),
        pa.field("filter_reason", pa.string()),
    ]
)

# The keyframes' CLIP image embeddings (clip_score's model), L2-normalised, as float16 little-endian
# bytes: 2 bytes a dimension (1.5 KB a keyframe for ViT-L-14). `cosmo-data dedup` clusters them.
EMBEDDINGS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip_idx", pa.int32(), nullable=False),
        pa.field("frame_idx", pa.int32(), nullable=False),
        pa.field("embedding", pa.binary(), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "clips": CLIPS,
    "frames": FRAMES,
    "transcripts": TRANSCRIPTS,
    "documents": DOCUMENTS,
    "embeddings": EMBEDDINGS,
    "chapters": CHAPTERS,
}
