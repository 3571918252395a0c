"""Typed training configuration. YAML maps onto these models one to one (unknown keys are errors).

Sections follow the COSMO recipe's parts: the vision tower, the language model, the multimodal
head (resampler, cross-attention, contrastive), the data, the optimizer and the run (checkpoints,
evaluation, parallelism). configs/train-tiny.yaml and configs/train-cosmo.yaml are both complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cosmo_data.schemas.config import load_model_config


class TrainError(Exception):
    """Input the runner cannot train on (shards, config, run folder); the CLI prints it as one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VisionConfig(_Strict):
    # An open_clip model name with a pretrained tag or checkpoint file (ViT-L-14 + openai), or one of
    # cosmo_data.models' tiny architectures with pretrained null (random weights made once, locally).
    model: str = "ViT-L-14"
    pretrained: str | None = "openai"


class LanguageConfig(_Strict):
    # A Hugging Face causal LM id or local directory, or "tiny-opt" (train/weights.py). Tokenizer and
    # weights load from the same reference through AutoTokenizer / AutoModelForCausalLM.
    model: str = "facebook/opt-iml-max-1.3b"
    # The lower layers stay text-only: their output is the contrastive text embedding.
    unimodal_depth: int = Field(12, ge=1)
    # Gated cross-attention before every interval_layer-th layer above unimodal_depth.
    interval_layer: int = Field(2, ge=1)
    # The LM's own weights stay frozen (Flamingo, COSMO); its input embeddings (tied to the output
    # head in OPT) learn, as they must for the new <visual>/<image>/<|endofchunk|> tokens.
    train_embeddings: bool = True


class HeadConfig(_Strict):
    """The multimodal parts that train: perceiver resampler, gated cross-attention, contrastive head."""

    perceiver_depth: int = Field(6, ge=1)
    perceiver_latents: int = Field(64, ge=1)
    perceiver_heads: int = Field(8, ge=1)
    perceiver_dim_head: int = Field(64, ge=1)
    max_frames: int = Field(8, ge=1, description="size of the resampler's frame-time embedding")
    xattn_heads: int = Field(8, ge=1)
    xattn_dim_head: int = Field(64, ge=1)
    # COSMO's cross_attention_compress_ratio 2: the cross-attention block's feed-forward is 4 / 2 wide.
    xattn_ff_mult: int = Field(2, ge=1)
    only_attend_immediate_media: bool = True
    latent_dim: int = Field(512, ge=1)
    contrastive_weight: float = Field(1.0, ge=0)
    contrastive_temperature: float = Field(0.2, gt=0)


class SourceConfig(_Strict):
    name: str
    weight: float = Field(1.0, gt=0)
    folder: Path


class DataConfig(_Strict):
    # Training shard folders normally come from the command line; sources here are used when it names none.
    sources: list[SourceConfig] = []
    eval_folders: list[Path] = []
    micro_batch: int = Field(96, ge=1)
    max_tokens: int = Field(128, ge=8)
    max_media: int = Field(3, ge=1, description="images or clips per sample (COSMO: 3)")
    frames_per_clip: int = Field(3, ge=1)
    # OpenFlamingo / COSMO skip MMC4 images of 10 KB or less and below this CLIP similarity.
    min_image_kb: float = Field(10.0, ge=0)
    sim_threshold: float = Field(0.24, ge=-1.0, le=1.0)
    max_sample_mb: float = Field(64.0, gt=0, description="larger samples are skipped and counted")
    # Training stops when more than max_skip_rate of a window of skip_window samples drawn from one
    # source were skipped: that source is broken and the mixture is no longer the one asked for.
    max_skip_rate: float = Field(0.5, gt=0, le=1)
    skip_window: int = Field(200, ge=1)
    workers: int = Field(4, ge=0, description="DataLoader worker processes per rank")
    prefetch: int = Field(2, ge=1, description="batches each worker prepares ahead")


class OptimConfig(_Strict):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(500, ge=0)
    # Cosine decay spans this many steps (None: the run's steps), down to min_lr_ratio x lr.
    total_steps: int | None = Field(None, ge=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_clip: float = Field(1.0, gt=0)


class RunConfig(_Strict):
    steps: int = Field(100_000, ge=1)
    seed: int = 0
    checkpoint_every: int = Field(3000, ge=1)
    keep_checkpoints: int = Field(10, ge=1)
    eval_every: int = Field(500, ge=1)
    eval_batches: int = Field(8, ge=1, description="micro-batches per rank per evaluation")
    # Off a terminal, seconds between progress lines (a terminal gets a live bar); metrics.jsonl and
    # TensorBoard get every step.
    log_every_s: float = Field(30.0, ge=0)
    parallel: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False
    compile: bool = False
    bf16: bool = Field(True, description="bf16 autocast on GPU; CPU always runs fp32")


class TrainConfig(_Strict):
    vision: VisionConfig = VisionConfig()
    language: LanguageConfig = LanguageConfig()
    head: HeadConfig = HeadConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _media_fit_the_frame_embedding(self) -> TrainConfig:
        if self.data.frames_per_clip > self.head.max_frames:
            raise ValueError(
                f"data.frames_per_clip ({self.data.frames_per_clip}) exceeds head.max_frames ({self.head.max_frames})"
            )
        return self

    @property
    def schedule_steps(self) -> int:
        return self.optim.total_steps or self.run.steps


def load_train_config(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read YAML (or the defaults: the COSMO 2B recipe) and apply dotted overrides like {"run.steps": 10}."""
    return load_model_config(TrainConfig, path, overrides, TrainError)
