"""Typed build configuration. YAML maps onto these models one to one (unknown keys are errors)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(Exception):
    """A configuration that cannot be used; the CLI prints it as one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _YamlLoader(yaml.SafeLoader):
    """YAML as config files and --set values are read: safe_load with YAML 1.2's plain scalars. YAML 1.1
    also reads yes/no/on/off as booleans (`language: no`, Whisper's code for Norwegian, became False),
    1:30 as 90, 0755 as octal and 2024-01-01 as a date; here only true/false are booleans, numbers are
    decimal (or 0x hex) with floats like 1e-3, and the rest stays text. A boolean option still takes
    yes/no/on/off, and a number option "0755": pydantic reads them."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not tag.endswith((":bool", ":int", ":float", ":timestamp"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+", "-+0123456789"),
    ("float", r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+", "-+.0123456789"),
    ("float", r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", "-+."),
):
    _YamlLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first))


def load_yaml(text: str) -> Any:
    """Parse YAML text with only true/false as booleans (numbers, null, lists and mappings as usual)."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: constructs plain data only


class StageResourcesConfig(_Strict):
    cpus: float = 1.0
    gpus: float = 0.0
    concurrency: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1)


class DownloadConfig(_Strict):
    max_height: int = Field(720, ge=16, description="yt-dlp picks the best format at most this tall")
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(2.0, ge=0)
    socket_timeout_s: float = Field(20.0, gt=0)
    deadline_s: float = Field(900.0, gt=0, description="overall limit for one video's download")
    max_duration_s: float = Field(4 * 3600.0, gt=0)
    max_filesize_mb: float = Field(4096.0, gt=0)
    # Access to real YouTube (docs/YOUTUBE.md); every yt-dlp call a video makes uses all of these.
    # A Netscape cookies file exported from a signed-in browser; each worker uses its own copy, since
    # yt-dlp writes the file back when it closes. Its values never reach a log, a table or build.json.
    cookies_file: str | None = None
    # Proxy URLs (http://user:password@host:port, socks5://...). A worker keeps to one and moves on
    # only while that one sleeps; empty: this machine's own address.
    proxies: list[str] = []
    # Per identity (a proxy, or this machine's address, with these cookies): at least this many seconds
    # between the starts of two YouTube extractions, over every worker of the node. YouTube allows
    # about 300 videos an hour to a guest (12 s) and about 2,000 to an account (1.8 s).
    youtube_interval_s: float = Field(15.0, ge=0)
    # An identity that meets a bot check or a rate limit sleeps this long, doubling per strike up to
    # identity_max_sleep_s; its video waits (another identity takes it) instead of failing. After
    # identity_give_up_s of waiting the video is recorded bot_check / rate_limited (retryable).
    identity_sleep_s: float = Field(300.0, ge=0)
    identity_max_sleep_s: float = Field(3600.0, ge=0)
    identity_give_up_s: float = Field(7200.0, ge=0)
    # yt-dlp's own sleeps: between the requests of one extraction, before each media download; and
    # the media's rate limit in bytes per second (null: unlimited).
    sleep_requests_s: float = Field(0.0, ge=0)
    sleep_before_media_s: float = Field(0.0, ge=0)
    rate_limit_bytes_s: int | None = Field(None, gt=0)
    # YouTube player clients to try, in order (yt-dlp's youtube:player_client); empty: yt-dlp's choice.
    player_clients: list[str] = []
    # A PO-token provider's HTTP server (bgutil-ytdlp-pot-provider: youtubepot-bgutilhttp:base_url).
    po_token_provider_url: str | None = None
    # The JavaScript runtime yt-dlp runs YouTube's player with (deno, node, bun, quickjs), optionally
    # "name:/path/to/binary"; null: yt-dlp's default (deno, if found). Checked when the build starts.
    js_runtime: str | None = None
    # yt-dlp's extractor_args ({"youtube": {"lang": ["en"]}}) and any other YoutubeDL option by yt-dlp's
    # own name (its YoutubeDL docstring); an unknown name stops the build at start.
    extractor_args: dict[str, dict[str, list[str]]] = {}
    ytdlp_options: dict[str, Any] = {}
    # The build stops taking new videos (and says to upgrade yt-dlp) when this share of the last
    # breaker_window downloads failed as extractor_broken: a site change fails every video alike.
    breaker_window: int = Field(50, ge=1)
    breaker_share: float = Field(0.6, gt=0, le=1)


class ScenesConfig(_Strict):
    # The hard-cut detector (with the gradual detectors below): "spike" (stages/cuts.py: a spike of the
    # motion-compensated difference, so no cuts inside fast motion) or one of PySceneDetect's; or the
    # learned TransNetV2 (stages/transnet.py: cuts and gradual transitions from every frame at 48x27).
    detector: Literal["spike", "content", "adaptive", "histogram", "hash", "transnetv2"] = "spike"
    # Threshold of the chosen hard-cut detector; None keeps its default.
    threshold: float | None = None
    # spike: a cut's difference is at least this many times that of the samples beside it (where no frame
    # was decoded between the samples; else its frame-to-frame change decides, stages/cuts.py).
    cut_ratio: float = Field(1.7, gt=1)
    # TransNetV2: a frame whose one-frame prediction exceeds this is in a transition (0.4 as NeMo
    # Curator: fades through black peak twice near 0.5, stages/transnet.py); windows of 100
    # frames run this many at a time; "auto" is the GPU where there is one.
    transnet_threshold: float = Field(0.4, gt=0, lt=1)
    transnet_batch_windows: int = Field(8, ge=1)
    transnet_device: Literal["auto", "cpu", "cuda"] = "auto"
    # Gradual transitions (fades, dissolves): content change across a window of this length.
    gradual: bool = True
    gradual_window_s: float = Field(1.0, gt=0)
    gradual_threshold: float = Field(30.0, gt=0)
    # A dissolve's middle frame is a blend of its ends: the blend fit may leave at most this fraction
    # of the change (motion leaves much more).
    gradual_blend_tolerance: float = Field(0.3, gt=0)
    # Fades through black, PySceneDetect's ThresholdDetector on mean brightness.
    fade_threshold: float = Field(12.0, ge=0)
    # Frames are decoded once; the detectors see them downscaled to this width at this rate (every
    # 3rd frame at 25 fps: as accurate as every 2nd on the generated dev sets, a third cheaper).
    detect_width: int = Field(128, ge=16)
    detect_fps: float = Field(8.0, gt=0)
    min_clip_s: float = Field(1.0, ge=0)
    max_clip_s: float = Field(30.0, gt=0)


class KeyframesConfig(_Strict):
    per_clip: int = Field(1, ge=1)
    # Longest side of a keyframe in pixels.
    size: int = Field(384, ge=16)
    jpeg_quality: int = Field(90, ge=1, le=100)
    max_per_video: int = Field(64, ge=1)
    # While decoding, frames are kept as JPEG candidates at this rate and picked per clip at the end;
    # past max_candidates the pool drops every other one and halves the rate (bounded memory).
    candidate_fps: float = Field(2.0, gt=0)
    max_candidates: int = Field(512, ge=2)
    # A keyframe whose 64-bit pHash is within this Hamming distance of an earlier keyframe of the video
    # is dropped before the models see it (repeated slides; MMC4 drops images within 5 of one kept);
    # null keeps them all. Every keyframe's pHash is stored (frames.phash) either way.
    repeat_max_distance: int | None = Field(5, ge=0, le=64)


class VideoStageConfig(_Strict):
    resources: StageResourcesConfig = StageResourcesConfig(concurrency=2)
    # Videos whose shorter side exceeds this are refused (too_large): H.264/VP9 decoders cannot
    # output a smaller picture, so this is what bounds the decoder's frame pool. Keyframes and
    # detector frames are always converted straight to their small sizes.
    max_decode_height: int = Field(2160, ge=16)
    deadline_s: float = Field(1800.0, gt=0, description="limit for one video's whole CPU stage")
    min_free_disk_gb: float = Field(1.0, ge=0)
    tmp_dir: str | None = None
    audio: bool = True
    # Let the decoder drop frames no other frame refers to (most B-frames), a third of the decoding of
    # a typical upload, while the frames left still come at scenes.detect_fps or faster (checked as
    # they come; where they do not, every frame is decoded).
    skip_unreferenced_frames: bool = True
    # COSMO clip mp4s (written only with the cosmo shard format) are at most this tall.
    clip_max_height: int = Field(256, ge=16)  # COSMO's loader reads clips at 256x256
    # Frame rate of the small copy the cosmo clip mp4s are cut from (encoded in the decode pass).
    clip_fps: float = Field(4.0, gt=0)


class AsrConfig(_Strict):
    enabled: bool = True
    # faster_whisper: CTranslate2 (int8 on CPU, float16 on GPU); openai_whisper: the reference PyTorch code.
    backend: Literal["faster_whisper", "openai_whisper"] = "openai_whisper"
    # A name either backend's library resolves (faster-whisper: small.en, distil-large-v3, large-v3, ...;
    # openai-whisper: small, turbo, ...), tiny.en from its registry package (models/asr.py), a
    # CTranslate2 folder or whisper checkpoint file, or tiny-random (openai_whisper only).
    model: str = "small"
    language: str | None = None  # None detects it
    fp16: bool = True  # used on GPU only
    beam_size: int | None = None
    max_new_tokens: int | None = None  # None keeps whisper's own limit
    resources: StageResourcesConfig = StageResourcesConfig(gpus=1.0, batch_size=4)
    # Decoding retries a 30 s window at the next temperature when its text looks wrong (whisper's
    # fallback); a single [0.0] turns the fallback off.
    temperatures: list[float] = Field([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1)
    best_of: int | None = Field(None, ge=1, description="samples per window at temperatures above 0")
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    # Audio quieter than this (RMS, dBFS) has no speech; whisper is not run on it.
    silence_dbfs: float = -60.0
    # batched: audio cut at quiet points into independent <=30 s windows decoded many at once
    # (faster_whisper: its BatchedInferencePipeline over Silero-VAD speech chunks, one video at a time);
    # sequential: the library's own transcribe seek loop, segment for segment.
    windows: Literal["batched", "sequential"] = "batched"
    # Windows per encoder/decoder pass, across the videos of a batch (batched windows only).
    window_batch: int = Field(16, ge=1)
    # The platform's caption track as the transcript (stages/captions.py): prefer: a video with a manual
    # track or the original-language automatic one skips whisper; never: whisper only (no track is
    # fetched); only: no whisper at all (a video without a track has no transcript).
    platform_captions: Literal["prefer", "never", "only"] = "prefer"


class CaptionConfig(_Strict):
    enabled: bool = True
    backend: Literal["open_clip", "hf"] = "open_clip"
    model: str = "coca_ViT-L-14"  # open_clip model name or HF model id / checkpoint directory
    pretrained: str | None = "mscoco_finetuned_laion2B-s13B-b90k"  # open_clip tag or checkpoint path
    prompt: str | None = None
    max_tokens: int = Field(30, ge=1)
    # Keyframes decoded and captioned per forward pass, gathered across the videos of a call
    # (resources.batch_size is videos per call); each pass's keyframes are decoded just before it.
    images_per_forward: int = Field(32, ge=1)
    resources: StageResourcesConfig = StageResourcesConfig(gpus=1.0, batch_size=32)
    fp16: bool = True  # used on GPU only


class ClipScoreConfig(_Strict):
    """Always runs: assignment places frames by their CLIP scores."""

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    # Images decoded and embedded per forward pass, and sentences per text forward pass, across the
    # videos of a call (resources.batch_size is videos per call).
    images_per_forward: int = Field(16, ge=1)
    sentences_per_forward: int = Field(64, ge=1)
    resources: StageResourcesConfig = StageResourcesConfig(gpus=1.0, batch_size=16)
    fp16: bool = True  # used on GPU only
    # LAION's predictors over the keyframes' CLIP embeddings (models/predictors.py): a published name,
    # a checkpoint file, or null (off). The published weights take OpenAI ViT-L-14 embeddings; with a
    # tiny CLIP, tiny random predictors of the same architecture are made.
    aesthetic_model: str | None = "sac+logos+ava1-l14-linearMSE"
    nsfw_model: str | None = "clip_autokeras_binary_nsfw"


class AssignConfig(_Strict):
    method: Literal["mmc4", "time", "ordered"] = "mmc4"
    # Weight of the time prior in the "time" and "ordered" methods.
    time_weight: float = Field(0.2, ge=0)
    time_scale_s: float = Field(10.0, gt=0)
    min_similarity: float = Field(0.15, ge=-1, le=1)
    dedup_similarity: float = Field(0.96, ge=-1, le=1)
    min_images: int = Field(1, ge=0)
    min_sentences: int = Field(1, ge=0)
    max_images: int = Field(32, ge=1)
    # Near-duplicate keyframes: dedup_similarity above compares 16x16 RGB thumbnails of the JPEGs,
    # 1 - mean absolute difference / 255 (the CLIP image embeddings are not kept on the record).
    resources: StageResourcesConfig = StageResourcesConfig(batch_size=8)
    # The DocumentStage (sentences from captions and speech) runs just before; CPU only, cheap.
    document_resources: StageResourcesConfig = StageResourcesConfig(batch_size=8)


class OutputConfig(_Strict):
    formats: list[Literal["native", "mmc4", "cosmo"]] = ["native", "mmc4", "cosmo"]
    # Sources per output group: one Parquet part per table and one tar per format per group.
    videos_per_shard: int = Field(64, ge=1)
    # The last stage, making every layout's samples on the workers (CPU only, light).
    resources: StageResourcesConfig = StageResourcesConfig(batch_size=8)
    # A local --out on a Ray cluster of several nodes is refused unless every node mounts it at the same
    # path (NFS, Lustre...): each node stages samples and writes tars there. True says it does.
    shared_filesystem: bool = False


class ClipRulesConfig(_Strict):
    """Per clip, right after the decode pass: a clip that fails one leaves the video with its keyframes
    (rows kept, status "filtered"); a video left without clips is filtered. Signals on 0..255 grey levels
    of the scene-detection frames (stages/frame_signals.py); null turns a rule off."""

    min_duration_s: float | None = Field(None, ge=0)
    min_brightness: float | None = None  # black clips
    min_sharpness: float | None = None  # variance of the Laplacian: blur
    min_motion: float | None = None
    max_motion: float | None = None
    # Frozen frames look like static slides; video.min_motion_when_silent drops those only when silent.
    max_frozen_fraction: float | None = Field(None, ge=0, le=1)


class FrameRulesConfig(_Strict):
    """Per keyframe, right after the decode pass."""

    min_side_px: int | None = Field(None, ge=1)  # MMC4 drops images under 150 px
    # After CLIP (curate_document, before the document rules): MMC4 drops images with NSFW P > 0.1.
    max_nsfw: float | None = Field(None, ge=0, le=1)


class VideoRulesConfig(_Strict):
    """Per video. Picture and loudness rules right after the decode pass, so a video they drop never
    reaches a model; speech rules right after ASR (null or empty: off)."""

    # Static footage is dropped only when it is also silent: how-to videos are often still slides
    # with speech. Silent: no audio track, or its RMS level below silence_dbfs.
    min_motion_when_silent: float | None = None
    silence_dbfs: float = -50.0
    # No speech and no caption text: nothing to write a document from.
    require_text: bool = False
    languages: list[str] = []  # whisper's codes; empty: any
    # The platform's licence must contain one of these texts (any case), e.g. ["Creative Commons"]:
    # judged from the metadata, before the media is downloaded; empty: any licence.
    licenses: list[str] = []
    min_language_probability: float | None = Field(None, ge=0, le=1)
    max_no_speech_prob: float | None = Field(None, ge=0, le=1)
    min_avg_logprob: float | None = None
    min_words_per_s: float | None = Field(None, ge=0)


class DocumentRulesConfig(_Strict):
    """Per document, after assignment, over its images' signals aggregated (never all-must-pass)."""

    min_matched_similarity: float | None = Field(None, ge=-1, le=1)
    min_aesthetic: float | None = None  # LAION's aesthetic score, ~1-10
    max_nsfw: float | None = Field(None, ge=0, le=1)
    aggregate: Literal["mean", "quantile"] = "mean"
    quantile: float = Field(0.5, ge=0, le=1)  # with aggregate: quantile


class CurationConfig(_Strict):
    """Rules over the signals every build stores (stages/curation.py); `cosmo-data filter` applies them
    again to a built corpus. A dropped item keeps its row with status "filtered" and filter_reason the
    rule's name, `<level>_<field>` (e.g. clip_min_brightness), counted as dropped_<name>."""

    clip: ClipRulesConfig = ClipRulesConfig()
    frame: FrameRulesConfig = FrameRulesConfig()
    video: VideoRulesConfig = VideoRulesConfig()
    document: DocumentRulesConfig = DocumentRulesConfig()


class NarrationConfig(_Strict):
    """Per-clip narration by an instruct LLM (stages/narrate.py), Howto-Interlink7M's GPT-4 step: one 1-3
    sentence narration per clip from its keyframe captions and speech, checked before it replaces them."""

    enabled: bool = False
    backend: Literal["transformers", "vllm"] = "transformers"
    # A Hugging Face id or directory, or a GGUF file: a path, or "<python package>/<file>.gguf" inside an
    # installed package (converted once into the model cache; gguf_sha256 checks the file first).
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    gguf_sha256: str | None = None
    # The user message template (string.Template: $video, $previous, $clips, $count, $last); None: the
    # package's configs/narration.prompt.
    prompt: str | None = None
    max_context_tokens: int = Field(8192, ge=256, description="vLLM max_model_len; windows of clips fit in it")
    tokens_per_clip: int = Field(96, ge=8, description="output budget per clip of a window")
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    prompts_per_forward: int = Field(8, ge=1, description="windows generated at once (transformers)")
    batch_timeout_s: float = Field(600.0, gt=0, description="a generate call that takes longer falls back")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)  # vLLM
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Grounding (stages/narration_grounding.py).
    min_words: int = Field(4, ge=1)
    max_words: int = Field(90, ge=1)
    max_sentences: int = Field(3, ge=1)
    min_support: float = Field(0.75, ge=0, le=1, description="share of content words found in the clip's inputs")
    resources: StageResourcesConfig = StageResourcesConfig(gpus=1.0, batch_size=16)


class BuildConfig(_Strict):
    seed: int = 0
    ray_address: str | None = None
    download: DownloadConfig = DownloadConfig()
    scenes: ScenesConfig = ScenesConfig()
    keyframes: KeyframesConfig = KeyframesConfig()
    video: VideoStageConfig = VideoStageConfig()
    asr: AsrConfig = AsrConfig()
    caption: CaptionConfig = CaptionConfig()
    narration: NarrationConfig = NarrationConfig()
    clip_score: ClipScoreConfig = ClipScoreConfig()
    assign: AssignConfig = AssignConfig()
    output: OutputConfig = OutputConfig()
    curation: CurationConfig = CurationConfig()


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> BuildConfig:
    """Read YAML (or defaults) and apply dotted overrides like {"asr.model": "tiny"}; None sets null."""
    return load_model_config(BuildConfig, path, overrides, ConfigError)


Model = TypeVar("Model", bound=BaseModel)


def load_model_config(
    model: type[Model], path: Path | None, overrides: dict[str, Any] | None, error: type[Exception]
) -> Model:
    """A typed config from YAML (or its defaults) with dotted overrides applied; every problem is one
    line raised as `error` (the build's ConfigError, the trainer's TrainError)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise error(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            data = load_yaml(text) or {}
        except yaml.YAMLError as exc:
            raise error(f"config {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
        if not isinstance(data, dict):
            raise error(f"config {path} must be a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise error(f"--set {dotted}: {key} is not a section")
        node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f"config {path}" if path else "config"
        first = exc.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"])
        location = f"{field_name}: " if field_name else ""
        raise error(f"{where}: {location}{first['msg']}") from exc
