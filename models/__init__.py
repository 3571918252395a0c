"""Model references for the GPU stages, and the tiny random models used offline.

Real runs name real models, loaded through each library's own cache: whisper names ("small",
"large-v3", "turbo") or checkpoint files; open_clip model names with a pretrained tag or checkpoint
file; Hugging Face model ids or local directories. Offline runs, tests and demos name tiny models of
the same architectures instead (TINY_WHISPER, TINY_CLIP, TINY_COCA, TINY_BLIP). Their random weights
are created once, deterministically, in the cache directory ($COSMO_DATA_CACHE, default
~/.cache/cosmo-data) and then load through exactly the code path real weights take.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cosmo_data.schemas.config import BuildConfig, StageResourcesConfig

if TYPE_CHECKING:  # torch is imported where it is used: the build's driver never needs it
    import torch
    from whisper.model import Whisper

T = TypeVar("T")

CACHE_ENV = "COSMO_DATA_CACHE"
TINY_WHISPER = "tiny-random"
TINY_CLIP = "cosmo-tiny-clip"
TINY_COCA = "cosmo-tiny-coca"
TINY_BLIP = "cosmo-tiny-blip"
TINY_SEED = 0

OFFLINE_HINT = (
    "On machines without internet, fetch the weights beforehand with `cosmo-data models --config "
    "<config>` (download_models: it fills the whisper, open_clip and Hugging Face caches) and set "
    "HF_HUB_OFFLINE=1, or point the config at a local checkpoint."
)

# Whisper checkpoints need the real audio context (30 s windows) and the real multilingual
# vocabulary, since the tokenizer and mel front end are whisper's own; everything else is tiny.
TINY_WHISPER_DIMS: dict[str, int] = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 64,
    "n_audio_head": 2,
    "n_audio_layer": 2,
    "n_vocab": 51865,
    "n_text_ctx": 448,
    "n_text_state": 64,
    "n_text_head": 2,
    "n_text_layer": 2,
}

# open_clip model configs in open_clip's own JSON format. Vocabulary and context length are the real
# ones so open_clip's bundled tokenizer works unchanged.
_TINY_VISION = {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32}
_TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TINY_OPEN_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    TINY_CLIP: {"embed_dim": 32, "vision_cfg": _TINY_VISION, "text_cfg": _TINY_TEXT},
    TINY_COCA: {
        # CoCa's caption decoder attends to image tokens of the embedding width, as in coca_ViT-L-14.
        "embed_dim": 64,
        "vision_cfg": {
            **_TINY_VISION,
            "attentional_pool": True,
            "attn_pooler_heads": 2,
            "attn_pooler_queries": 16,
            "output_tokens": True,
        },
        "text_cfg": {**_TINY_TEXT, "context_length": 76, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {
            "context_length": 76,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
            "attn_pooler_heads": 2,
        },
        "custom_text": True,
    },
}

# WordPiece vocabulary of the tiny BLIP captioner: BERT's special tokens, BLIP's decoder start token,
# a few caption words and single letters so any string tokenizes.
_BLIP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
_BLIP_WORDS = (
    "a an the of in on at with and is are to person man woman people hand hands child dog cat car "
    "kitchen table bowl pan food cooking cutting holding wall room street tree water white black red "
    "blue green small large photo picture video screen"
).split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
TINY_BLIP_VOCAB = _BLIP_SPECIALS + _BLIP_WORDS + list(_LETTERS) + [f"##{c}" for c in _LETTERS]

# Creating tiny models reseeds torch's global generator; threads of one process take turns.
_creation_lock = threading.Lock()


class ModelError(Exception):
    """A model reference that cannot be resolved or loaded; stops the stage's setup."""


def _load_error(what: str, exc: Exception) -> ModelError:
    message = " ".join(str(exc).split()).rstrip(".")
    return ModelError(f"cannot load {what}: {message}. {OFFLINE_HINT}")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cosmo-data")


def tiny_dir(kind: str) -> Path:
    """Where tiny models of one kind live, keyed by their specification: a changed spec never
    loads a stale checkpoint made from an older one."""
    spec = json.dumps([TINY_SEED, TINY_WHISPER_DIMS, TINY_OPEN_CLIP_CONFIGS, TINY_BLIP_VOCAB], sort_keys=True)
    return cache_dir() / kind / f"tiny-{hashlib.sha1(spec.encode()).hexdigest()[:10]}"


def no_grad(fn: Callable[..., T]) -> Callable[..., T]:
    """torch.no_grad() around fn, with torch imported when fn runs, not when its module is imported:
    the build's driver constructs the stages and must not pay seconds for a torch it never uses."""

    @functools.wraps(fn)
    def without_grad(*args: Any, **kwargs: Any) -> T:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return without_grad


def pick_device(resources: StageResourcesConfig) -> str:
    import torch

    return "cuda" if resources.gpus > 0 and torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------
# Creating tiny checkpoints


@contextmanager
def _seeded() -> Iterator[None]:
    """Deterministic weights without disturbing the caller's random state."""
    import torch

    with _creation_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        yield


def create_once(target: Path, write: Callable[[Path], None]) -> Path:
    """Create target (file or directory) unless it exists, atomically.

    The content is written under a temporary name next to it and renamed into place, so a reader
    never sees half a checkpoint. When several workers race, each writes its own copy: a file is
    replaced by an identical one, a directory keeps the first copy and the others are discarded.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staged = staging / target.name
        write(staged)
        try:
            os.rename(staged, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_whisper_checkpoint() -> Path:
    def write(path: Path) -> None:
        import torch
        from whisper.model import ModelDimensions, Whisper

        dims = ModelDimensions(**TINY_WHISPER_DIMS)
        with _seeded():
            model = Whisper(dims)
            # Whisper leaves the decoder's learned positions uninitialised (torch.empty).
            torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)
        torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)

    return create_once(tiny_dir("whisper") / f"{TINY_WHISPER}.pt", write)


def _tiny_open_clip_config(name: str) -> Path:
    def write(path: Path) -> None:
        path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIGS[name], indent=2), encoding="utf-8")

    return create_once(tiny_dir("open_clip") / f"{name}.json", write)


def register_tiny_open_clip(name: str) -> None:
    """Make a tiny architecture known to open_clip by name, as its built-in configs are."""
    import open_clip

    config_path = _tiny_open_clip_config(name)
    if name not in open_clip.list_models():
        open_clip.add_model_config(config_path)


def tiny_open_clip_checkpoint(name: str) -> Path:
    def write(path: Path) -> None:
        import open_clip
        import torch

        with _seeded():
            model = open_clip.create_model(name, pretrained=None)
            if hasattr(model, "text_decoder"):
                # CoCa's caption head is created with torch.empty and never initialised by open_clip.
                head = model.text_decoder.text_projection
                torch.nn.init.normal_(head, std=head.shape[0] ** -0.5)
        torch.save({"state_dict": model.state_dict()}, path)

    register_tiny_open_clip(name)
    return create_once(tiny_dir("open_clip") / f"{name}.pt", write)


def tiny_blip_directory() -> Path:
    def write(path: Path) -> None:
        from transformers import (
            BertTokenizer,
            BlipConfig,
            BlipForConditionalGeneration,
            BlipImageProcessor,
            BlipProcessor,
        )

        vocab = {token: i for i, token in enumerate(TINY_BLIP_VOCAB)}
        tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
        processor = BlipProcessor(
            image_processor=BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
        )
        config = BlipConfig(
            text_config={
                "vocab_size": len(vocab),
                "hidden_size": 64,
                "encoder_hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": 128,
                "bos_token_id": vocab["[DEC]"],
                "eos_token_id": vocab["[SEP]"],
                "sep_token_id": vocab["[SEP]"],
                "pad_token_id": vocab["[PAD]"],
                # Wider than BLIP's 0.02 so that random weights let the image steer the words.
                "initializer_range": 0.2,
            },
            # BLIP's default vision init (std 1e-10) would make every image look the same.
            vision_config={
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 64,
                "patch_size": 16,
                "initializer_range": 0.02,
            },
            projection_dim=32,
        )
        with _seeded():
            model = BlipForConditionalGeneration(config)
        path.mkdir()
        processor.save_pretrained(path)
        model.save_pretrained(path)

    return create_once(tiny_dir("hf") / TINY_BLIP, write)


# ---------------------------------------------------------------------------------------------
# Loading


def load_whisper(model: str, device: str) -> Whisper:
    """whisper.load_model for a whisper name, a checkpoint file, TINY_WHISPER, or a packaged real model
    (models/asr.py: tiny.en from its registry package, converted once, instead of whisper's download)."""
    import whisper

    from cosmo_data.models.asr import openai_whisper_checkpoint

    packaged = openai_whisper_checkpoint(model)
    reference = str(tiny_whisper_checkpoint()) if model == TINY_WHISPER else str(packaged) if packaged else model
    if reference not in whisper.available_models() and not os.path.isfile(reference):
        raise ModelError(
            f"asr model {model!r} is neither a whisper model name ({', '.join(whisper.available_models())}), "
            f"{TINY_WHISPER!r}, nor a checkpoint file"
        )
    try:
        return whisper.load_model(reference, device=device)
    except Exception as exc:  # download (URLError), checksum or checkpoint errors alike
        raise _load_error(f"whisper model {model!r}", exc) from exc


@dataclass
class OpenClipModel:
    name: str  # the open_clip model name it was created from
    model: torch.nn.Module
    preprocess: Callable  # open_clip's inference image transform (PIL image -> tensor)
    tokenizer: Callable
    device: str
    dtype: torch.dtype


def load_open_clip(model: str, pretrained: str | None, device: str, fp16: bool) -> OpenClipModel:
    """open_clip.create_model_and_transforms for a name + tag or checkpoint, or a tiny model."""
    import open_clip
    import torch

    if model in TINY_OPEN_CLIP_CONFIGS:
        if pretrained is not None and not os.path.isfile(pretrained):
            raise ModelError(
                f"open_clip model {model!r} has random weights created locally and no pretrained tag "
                f"({pretrained!r}); set pretrained to null, or to a checkpoint file of this architecture"
            )
        register_tiny_open_clip(model)
        pretrained = pretrained or str(tiny_open_clip_checkpoint(model))
    precision = "fp16" if fp16 and device == "cuda" else "fp32"
    try:
        clip_model, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, device=device, precision=precision
        )
        tokenizer = open_clip.get_tokenizer(model)
    except Exception as exc:  # unknown names and tags, failed downloads, bad checkpoints
        raise _load_error(f"open_clip model {model!r} (pretrained {pretrained!r})", exc) from exc
    clip_model.eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return OpenClipModel(model, clip_model, preprocess, tokenizer, device, dtype)


def load_hf_captioner(model: str, device: str, fp16: bool) -> tuple[Any, torch.nn.Module]:
    """AutoProcessor + AutoModelForImageTextToText for a hub id, a local directory or TINY_BLIP."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    reference = str(tiny_blip_directory()) if model == TINY_BLIP else model
    dtype = torch.float16 if fp16 and device == "cuda" else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(reference)
        captioner = AutoModelForImageTextToText.from_pretrained(reference, dtype=dtype)
    except Exception as exc:  # OSError for missing hub files, ValueError for unsupported models
        raise _load_error(f"Hugging Face captioner {model!r}", exc) from exc
    return processor, captioner.to(device).eval()


def download_models(config: BuildConfig) -> list[str]:
    """Fetch every model the config's enabled model stages use into the libraries' caches.

    Loading is the fetch: each library downloads into its own cache (whisper: ~/.cache/whisper,
    open_clip and transformers: the Hugging Face cache) and verifies the weights load. Tiny models
    are created instead. Returns one line per model.
    """
    fetched = []
    if config.asr.enabled:
        started = time.perf_counter()
        if config.asr.backend == "faster_whisper":
            from cosmo_data.models.asr import load_faster_whisper

            load_faster_whisper(config.asr.model, "cpu", fp16=False)
        else:
            load_whisper(config.asr.model, "cpu")
        what = f"{config.asr.backend.replace('_', '-')} {config.asr.model}"
        fetched.append(f"asr: {what} ({time.perf_counter() - started:.1f} s)")
    if config.caption.enabled:
        started = time.perf_counter()
        if config.caption.backend == "open_clip":
            load_open_clip(config.caption.model, config.caption.pretrained, "cpu", fp16=False)
            what = f"open_clip {config.caption.model} ({config.caption.pretrained})"
        else:
            load_hf_captioner(config.caption.model, "cpu", fp16=False)
            what = f"hf {config.caption.model}"
        fetched.append(f"caption: {what} ({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    load_open_clip(config.clip_score.model, config.clip_score.pretrained, "cpu", fp16=False)
    fetched.append(
        f"clip_score: open_clip {config.clip_score.model} ({config.clip_score.pretrained}) "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return fetched


# ---------------------------------------------------------------------------------------------
# Running a model over a batch of records
