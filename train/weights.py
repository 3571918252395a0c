"""The pretrained parts COSMO starts from: an open_clip vision tower and a Hugging Face causal LM.

Real runs name real weights (open_clip "ViT-L-14" + "openai", "facebook/opt-iml-max-1.3b"), fetched
by each library into its own cache. The tiny config names TINY_LM instead: an OPT of the same code
with tiny widths and GPT-2's BPE (OPT's tokenizer is GPT-2's BPE; the vocabulary comes from the
gpt2.tiktoken file that openai-whisper ships, so nothing touches the hub). Its random weights are
written once, seeded and atomically, as a Hugging Face model directory under $COSMO_DATA_CACHE, and
then load through AutoTokenizer / AutoModelForCausalLM exactly as a hub id does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cosmo_data.models import ModelError, cache_dir, create_once, load_open_clip
from cosmo_data.models.gpt2_tokens import gpt2_vocabulary
from cosmo_data.train.config import TrainConfig, TrainError

TINY_LM = "tiny-opt"
RANDOM_LM_SEED = 0
TINY_OPT_CONFIG: dict[str, Any] = {
    "vocab_size": 50272,  # OPT's own (GPT-2's 50257 rounded up to a multiple of 8)
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "ffn_dim": 128,
    "num_attention_heads": 2,
    "word_embed_proj_dim": 64,
    "max_position_embeddings": 512,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}
# facebook/opt-iml-max-1.3b's architecture, for benchmarks of the 2B model where its weights cannot be fetched.
OPT_1_3B_CONFIG: dict[str, Any] = {
    "vocab_size": 50272,
    "hidden_size": 2048,
    "num_hidden_layers": 24,
    "ffn_dim": 8192,
    "num_attention_heads": 32,
    "word_embed_proj_dim": 2048,
    "max_position_embeddings": 2048,
    "dropout": 0.1,
    "attention_dropout": 0.0,
}

# COSMO's special tokens: a media place in the text (<visual> for clips, <image> for images, as the
# mmc4 and cosmo loaders write them) and the end of the text chunk that belongs to one media.
VISUAL_TOKEN, IMAGE_TOKEN, END_OF_CHUNK = "<visual>", "<image>", "<|endofchunk|>"
MEDIA_TOKENS = (VISUAL_TOKEN, IMAGE_TOKEN)


@dataclass
class Pretrained:
    vision: torch.nn.Module  # open_clip's visual tower, returning (pooled, patch tokens)
    to_pixels: Callable  # open_clip's transform for that tower up to its ToTensor (PIL image -> PIL image)
    pixel_mean: tuple[float, ...]  # and its Normalize, which the model applies on the device
    pixel_std: tuple[float, ...]
    lm: torch.nn.Module
    tokenizer: Any
    media_token_ids: tuple[int, ...]
    end_of_chunk_id: int


def _write_random_opt(path: Path, opt_config: dict[str, Any]) -> None:
    from tiktoken_ext.openai_public import r50k_pat_str
    from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(gpt2_vocabulary()), pattern=r50k_pat_str).converted()
    end_of_text = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=end_of_text, eos_token=end_of_text, unk_token=end_of_text, pad_token="<pad>"
    )
    config = OPTConfig(
        **opt_config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_LM_SEED)
        model = OPTForCausalLM(config)
    path.mkdir()
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)


def random_opt_directory(opt_config: dict[str, Any]) -> Path:
    """A Hugging Face directory of an OPT with this config and random weights, created once (atomically,
    see models.create_once). Keyed by the config, so a changed one never loads a stale directory."""
    spec = json.dumps([RANDOM_LM_SEED, opt_config], sort_keys=True)
    target = cache_dir() / "hf" / f"random-opt-{hashlib.sha1(spec.encode()).hexdigest()[:10]}"
    return create_once(target, lambda staged: _write_random_opt(staged, opt_config))


def load_language_model(reference: str) -> tuple[Any, torch.nn.Module]:
    """AutoTokenizer + AutoModelForCausalLM for a hub id, a local directory or TINY_LM, in fp32 (the
    frozen weights are cast by autocast on GPU; the optimizer's copies of trainable ones stay fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = str(random_opt_directory(TINY_OPT_CONFIG)) if reference == TINY_LM else reference
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        lm = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    except Exception as exc:  # OSError for missing hub files or no network, ValueError for unknown models
        message = " ".join(str(exc).split())
        raise TrainError(f"cannot load language model {reference!r}: {message}") from exc
    return tokenizer, lm


def split_transform(preprocess: Callable) -> tuple[Callable, tuple[float, ...], tuple[float, ...]]:
    """open_clip's Compose([... PIL steps, ToTensor, Normalize]) cut before ToTensor: data workers hand
    over uint8 pixels (a quarter of float32's bytes) and the model scales and normalizes them on the device,
    which is what ToTensor + Normalize compute."""
    from torchvision.transforms import Compose, Normalize

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or not type(steps[-2]).__name__.endswith("ToTensor") or not isinstance(steps[-1], Normalize):
        raise TrainError(f"the vision tower's transform does not end in ToTensor + Normalize: {preprocess}")
    return Compose(steps[:-2]), tuple(steps[-1].mean), tuple(steps[-1].std)


def load_pretrained(config: TrainConfig) -> Pretrained:
    """The frozen vision tower with its transform, and the LM with COSMO's special tokens added."""
    try:
        clip = load_open_clip(config.vision.model, config.vision.pretrained, "cpu", fp16=False)
    except ModelError as exc:
        raise TrainError(str(exc)) from exc
    vision = clip.model.visual
    vision.output_tokens = True  # open_clip's towers then return (pooled, patch tokens)
    tokenizer, lm = load_language_model(config.language.model)
    tokenizer.add_special_tokens({"additional_special_tokens": [*MEDIA_TOKENS, END_OF_CHUNK]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        # OPT's embedding already has spare rows past its vocabulary; grow only when they run out.
        lm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
    media_ids = tuple(tokenizer.convert_tokens_to_ids(token) for token in MEDIA_TOKENS)
    to_pixels, mean, std = split_transform(clip.preprocess)
    end_of_chunk = tokenizer.convert_tokens_to_ids(END_OF_CHUNK)
    return Pretrained(vision, to_pixels, mean, std, lm, tokenizer, media_ids, end_of_chunk)
