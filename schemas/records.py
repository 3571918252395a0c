"""The one record that travels through every stage: one source video and everything derived from it.

Records are plain dataclasses so stages stay testable without Ray; the Ray adapter pickles them.
A failed record keeps travelling (status != "ok") so that the writers give it exactly one `videos` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cosmo_data.schemas.redact import redact

# Failure kinds recorded in videos.status (anything but OK is a failure).
OK = "ok"
INVALID_SOURCE = "invalid_source"
DOWNLOAD_FAILED = "download_failed"
TOO_LONG = "too_long"
TOO_LARGE = "too_large"
DECODE_FAILED = "decode_failed"
NO_VIDEO_STREAM = "no_video_stream"
NO_SCENES = "no_scenes"
FILTERED = "filtered"
DEADLINE_EXCEEDED = "deadline_exceeded"
DISK_FULL = "disk_full"
ASR_FAILED = "asr_failed"
CAPTION_FAILED = "caption_failed"
CLIP_SCORE_FAILED = "clip_score_failed"
DOCUMENT_FAILED = "document_failed"
SHARD_FAILED = "shard_failed"
# Storage that failed for the moment while a video's samples were staged (object storage's SlowDown, a
# network blip, an I/O error): the video itself is fine, its group is worth building again.
STORAGE_FAILED = "storage_failed"
INTERNAL_ERROR = "internal_error"
# A download given up on because the host kept answering 429 Too Many Requests (YouTube's rate limit).
RATE_LIMITED = "rate_limited"
# Kept out on purpose, never built: another source row is the same video (DUPLICATE, with duplicate_of
# naming the copy kept), or the source id is listed in `cosmo-data build --exclude-ids` (EXCLUDED).
DUPLICATE = "duplicate"
EXCLUDED = "excluded"
# Platform failure kinds, read from yt-dlp's words (stages/download_failures.py). The video's own state,
# which no retry changes: removed or never existed, private, for a channel's members, DRM-protected.
VIDEO_UNAVAILABLE = "video_unavailable"
PRIVATE_VIDEO = "private_video"
MEMBERS_ONLY = "members_only"
DRM_PROTECTED = "drm_protected"
# Needs signed-in cookies of an adult account (download.cookies_file): retry with --retry-failed age_restricted.
AGE_RESTRICTED = "age_restricted"
# Not served to this address's country: retry through a proxy elsewhere (--retry-failed geo_blocked).
GEO_BLOCKED = "geo_blocked"
# A live stream or a premiere not yet over: a later run may get it.
LIVE_OR_UPCOMING = "live_or_upcoming"
# "Sign in to confirm you're not a bot": the identity's (address, cookies) fault, not the video's.
BOT_CHECK = "bot_check"
# A 403 on the media URL: it expired or is bound to another address; extracting again gets a new one.
MEDIA_FORBIDDEN = "media_forbidden"
# yt-dlp's extractor no longer understands the site: upgrade yt-dlp and retry.
EXTRACTOR_BROKEN = "extractor_broken"

FAILURES = frozenset(
    {
        INVALID_SOURCE,
        DOWNLOAD_FAILED,
        TOO_LONG,
        TOO_LARGE,
        DECODE_FAILED,
        NO_VIDEO_STREAM,
        NO_SCENES,
        FILTERED,
        DEADLINE_EXCEEDED,
        DISK_FULL,
        ASR_FAILED,
        CAPTION_FAILED,
        CLIP_SCORE_FAILED,
        DOCUMENT_FAILED,
        SHARD_FAILED,
        STORAGE_FAILED,
        INTERNAL_ERROR,
        RATE_LIMITED,
        DUPLICATE,
        EXCLUDED,
        VIDEO_UNAVAILABLE,
        PRIVATE_VIDEO,
        MEMBERS_ONLY,
        DRM_PROTECTED,
        AGE_RESTRICTED,
        GEO_BLOCKED,
        LIVE_OR_UPCOMING,
        BOT_CHECK,
        MEDIA_FORBIDDEN,
        EXTRACTOR_BROKEN,
    }
)
# Failures of the moment, not of the video: a worker's disk, a host's rate limit, a deadline met on a
# busy machine, storage out of reach, an identity blocked for a while. `cosmo-data build --retry-failed` reruns the
# groups that hold them.
RETRYABLE = frozenset(
    {
        DISK_FULL,
        RATE_LIMITED,
        DEADLINE_EXCEEDED,
        STORAGE_FAILED,
        BOT_CHECK,
        MEDIA_FORBIDDEN,
        LIVE_OR_UPCOMING,
        EXTRACTOR_BROKEN,
    }
)


class VideoFailure(Exception):
    """A failure of one video, with the status kind it is recorded under; a FILTERED one may name the
    filter (videos.filter_reason), so that the funnel counts it under that name."""

    def __init__(self, status: str, message: str, filter_reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.filter_reason = filter_reason


@dataclass
class Clip:
    clip_idx: int
    start_s: float
    end_s: float
    # What opened this clip: "start" (first clip), "cut", "gradual" (fade/dissolve) or "split" (max length).
    boundary: str = "cut"
    # Which detector found that boundary ("content", "adaptive", "histogram", "hash" for cuts, "fade",
    # "gradual" for the gradual ones, or "transnetv2") and its score there: the cut detector's frame
    # score (spike: the motion-compensated difference, 0..255), "fade": the frame's mean brightness,
    # "gradual": a fade's dip depth (0..1), a dissolve's prominence (>= 1) or, where fast motion hides
    # that, its variance ratio (< 0.75); TransNetV2's transition probability.
    # None for the first clip and splits.
    boundary_detector: str | None = None
    boundary_score: float | None = None
    # Curation signals from the decode pass (stages/frame_signals.py) and the rule that filtered the clip.
    motion: float | None = None
    brightness: float | None = None
    sharpness: float | None = None
    frozen_fraction: float | None = None
    filter_reason: str | None = None
    # Narration (stages/narrate.py): "narrated" or why the clip kept its sentences (None: not narrated at
    # all), and the text the model wrote for it, passed or not.
    narration_status: str | None = None
    narration: str | None = None


@dataclass
class Frame:
    clip_idx: int
    frame_idx: int  # index of the keyframe within the video, 0..n-1 in time order
    t_s: float
    width: int
    height: int
    jpeg: bytes
    caption: str | None = None
    # 64-bit DCT perceptual hash of the keyframe (stages/phash.py), as a signed int64.
    phash: int | None = None
    # Its CLIP image embedding (stages/clip_score.py), L2-normalised, float16 little-endian bytes.
    embedding: bytes | None = None
    # LAION's predictors over that embedding (models/predictors.py): aesthetic score (~1-10) and NSFW
    # probability; None where CLIP never saw the keyframe.
    aesthetic: float | None = None
    nsfw: float | None = None
    # The curation rule that filtered the keyframe (its own, or its clip's).
    filter_reason: str | None = None


@dataclass
class Segment:
    seg_idx: int
    start_s: float
    end_s: float
    text: str
    # Whisper's scores; None for a platform's or a source's caption text.
    avg_logprob: float | None
    no_speech_prob: float | None


@dataclass
class Sentence:
    text: str
    start_s: float
    end_s: float
    source: str  # "caption" or "asr"


@dataclass
class Document:
    doc_id: str
    sentences: list[Sentence]
    # Keyframes kept in the document, as indices into VideoRecord.frames.
    image_frames: list[int] = field(default_factory=list)
    # [images][sentences] cosine similarities of the kept images against every sentence.
    similarity: list[list[float]] = field(default_factory=list)
    matched_text_index: list[int] = field(default_factory=list)
    matched_sim: list[float] = field(default_factory=list)
    assignment: str = "mmc4"
    n_tokens: int = 0


@dataclass
class CosmoVideo:
    """The cosmo layout's video of one source (stages/cosmo_video.py): constant frame rate, sped up."""

    mp4: bytes
    fps: float  # the mp4's constant frame rate
    frames: int
    # clip_idx -> (start, end) whole seconds of its clip string, for the clips that have some.
    spans: dict[int, tuple[int, int]]


@dataclass
class ShardPart:
    """One video's samples, staged by the last stage as one object: every layout's tar members back to back.
    A worker concatenates its group's parts into the group's tars; the driver only passes this on."""

    path: str  # the object's local path or URI
    spans: dict[str, tuple[int, int]]  # layout -> (offset, length) of its members in the object


@dataclass
class VideoRecord:
    video_id: str
    source: str
    source_index: int
    # "youtube", "url", "local" or "invalid", and what the downloader fetches (URL or absolute path).
    source_kind: str = "local"
    locator: str = ""
    status: str = OK
    error: str | None = None
    # Probe metadata.
    duration_s: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    has_audio: bool | None = None
    video_codec: str | None = None
    file_size: int | None = None
    language: str | None = None
    # sha256 of the downloaded file's bytes (hex): exact duplicates under other source ids.
    content_hash: str | None = None
    # The video_id of the copy kept, where this one is a DUPLICATE of it.
    duplicate_of: str | None = None
    # Curation (stages/curation.py): the rule that filtered the video, and its signals (schemas/tables.py).
    filter_reason: str | None = None
    language_probability: float | None = None
    no_speech_prob: float | None = None
    avg_logprob: float | None = None
    words_per_s: float | None = None
    audio_dbfs: float | None = None
    motion: float | None = None
    # The Ray node that ran the video stage for it (set by the Ray adapter; stages never import ray).
    node_id: str | None = None
    # Seconds spent per stage, e.g. {"download": 1.2, "decode": 3.4}.
    timings: dict[str, float] = field(default_factory=dict)
    # Counts of things filters removed, keyed "dropped_<reason>".
    counters: dict[str, int] = field(default_factory=dict)
    clips: list[Clip] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    # Clips and keyframes a curation rule filtered: out of the stages' way, kept for their table rows.
    filtered_clips: list[Clip] = field(default_factory=list)
    filtered_frames: list[Frame] = field(default_factory=list)
    # 16 kHz mono signed 16-bit little-endian PCM; None when the video has no audio.
    audio_pcm: bytes | None = None
    transcript: list[Segment] = field(default_factory=list)
    # Where the transcript came from: stages/captions.py (platform_manual, platform_auto, source) or
    # whisper; None while there is none.
    text_source: str | None = None
    # The platform's metadata from the one extraction (stages/platform_info.py): videos' columns, the
    # chapters, the info dict minus formats as JSON; and the yt-dlp version that extracted or failed.
    platform: dict | None = None
    chapters: list[dict] = field(default_factory=list)
    info_json: str | None = None
    ytdlp_version: str | None = None
    # Only when the cosmo shard format is on.
    cosmo_video: CosmoVideo | None = None
    # Where the last stage stages this video's samples: its output group's folder or prefix (set by the build).
    staging: str | None = None
    # The samples the last stage staged there (stages/shard_samples.py): the driver gets where, not the bytes.
    shard_part: ShardPart | None = None
    document: Document | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def fail(self, status: str, error: str) -> None:
        """Record a failure; heavy payloads are dropped, the row itself stays. The error text is written
        and logged: a URL in it (a downloader's message quoting the locator) loses its credentials."""
        self.status = status
        self.error = redact(error)
        self.audio_pcm = None
        self.cosmo_video = None
        self.shard_part = None
        self.document = None

    def image_info(self) -> list[dict]:
        """The document's images as MMC4 lists them (plus frame index and time), one dict per kept image."""
        document = self.document
        if document is None:
            return []
        return [
            {
                "image_name": f"{self.frames[frame_index].frame_idx}.jpg",
                "frame_idx": self.frames[frame_index].frame_idx,
                "t_s": self.frames[frame_index].t_s,
                "matched_text_index": text_index,
                "matched_sim": sim,
            }
            for frame_index, text_index, sim in zip(
                document.image_frames, document.matched_text_index, document.matched_sim
            )
        ]

    def count(self, reason: str, n: int = 1) -> None:
        if n:
            key = f"dropped_{reason}"
            self.counters[key] = self.counters.get(key, 0) + n
