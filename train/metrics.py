"""Per-step metrics: RUN/metrics.jsonl (one line per optimizer step), a progress line on stdout, and
TensorBoard events where tensorboard is importable; the FLOPs behind MFU.

FLOPs of a step are counted from parameter counts and the tokens that went through them:
  2 x frozen vision-tower params x patch tokens (forward only, under no_grad)
  6 x resampler params x patch tokens                      (trains: forward + both backward passes)
  4 x frozen LM params (embeddings aside) x text tokens     (forward + the backward pass to its inputs,
                                                            which gradients need on their way down)
  6 or 4 x output-head params x text tokens                 (6 when the head trains: OPT ties it to the
                                                            input embeddings)
  6 x cross-attention and text-pooling params x text tokens
Text tokens are the real (unpadded) ones, patch tokens those of real frames; attention scores
(quadratic in the 128-token sequences and small next to the matmuls) are left out, so MFU is a slight
underestimate. MFU = FLOPs per second / (bf16 dense peak of the device x world size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosmo_data.train.model import CrossAttentionDecoderLayer

# Dense bf16 peaks (FLOP/s) from the vendors' data sheets, matched against torch.cuda.get_device_name.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


class FlopCounter:
    """Parameter counts of a CosmoModel, grouped by what a step does with them."""

    def __init__(self, model: nn.Module):
        lm = model.lm
        embeddings = {id(p) for module in lm.modules() if isinstance(module, nn.Embedding) for p in module.parameters()}
        head = lm.get_output_embeddings().weight
        cross = [m.cross_attention for m in model.modules() if isinstance(m, CrossAttentionDecoderLayer)]
        lm_body = [p for p in lm.parameters() if id(p) not in embeddings and p is not head]
        cross_ids = {id(p) for block in cross for p in block.parameters()}
        self.vision = _count(model.vision.parameters())
        self.resampler = _count(model.resampler.parameters())
        self.lm_frozen = _count(p for p in lm_body if id(p) not in cross_ids)
        self.head = head.numel()
        self.head_trains = head.requires_grad
        text_side = ("text_query", "text_pool", "text_pool_ff", "text_norm", "text_to_latent", "visual_to_latent")
        self.text_trainable = _count(p for block in cross for p in block.parameters()) + _count(
            p for name, p in model.named_parameters() if name.split(".")[0] in text_side
        )
        self.patches_per_frame = model.patches

    def step_flops(self, text_tokens: int, frames: int) -> float:
        patch_tokens = frames * self.patches_per_frame
        per_text_token = 4 * self.lm_frozen + (6 if self.head_trains else 4) * self.head + 6 * self.text_trainable
        return 2 * self.vision * patch_tokens + 6 * self.resampler * patch_tokens + per_text_token * text_tokens


class MetricsLog:
    """Rank 0's writer of metrics.jsonl / eval.jsonl, the progress line and TensorBoard events."""

    def __init__(self, run: Path, first_step: int, total_steps: int, log_every: int):
        self.run, self.total_steps, self.log_every = run, total_steps, log_every
        self.metrics = open(run / "metrics.jsonl", "a", encoding="utf-8")
        self.evals = open(run / "eval.jsonl", "a", encoding="utf-8")
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            pass
        else:
            # purge_step drops events a killed run wrote past the checkpoint it resumes from.
            self.tensorboard = SummaryWriter(str(run / "tensorboard"), purge_step=first_step + 1)

    def _write(self, stream, record: dict[str, Any], prefix: str) -> None:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tensorboard.add_scalar(f"{prefix}/{key}", value, record["step"])

    def step(self, record: dict[str, Any]) -> None:
        self._write(self.metrics, record, "train")
        step = record["step"]
        if step % self.log_every == 0 or step == self.total_steps:
            mfu = f" mfu {record['mfu']:.1%}" if record.get("mfu") is not None else ""
            print(
                f"step {step}/{self.total_steps} loss {record['loss']:.4f} (lm {record['lm_loss']:.4f}, "
                f"contrastive {record['contrastive_loss']:.4f}) lr {record['lr']:.2e} grad {record['grad_norm']:.3f} | "
                f"{record['samples_per_s']:.1f} samples/s {record['tokens_per_s']:.0f} tokens/s "
                f"data wait {record['data_wait_fraction']:.0%}{mfu} | skipped {record['skipped_samples']}",
                flush=True,
            )

    def evaluation(self, record: dict[str, Any]) -> None:
        self._write(self.evals, record, "eval")
        recalls = " ".join(f"{k} {v:.2f}" for k, v in record.items() if "_r@" in k)
        print(f"eval step {record['step']}: val loss {record['val_loss']:.4f} | {recalls}", flush=True)

    def close(self) -> None:
        self.metrics.close()
        self.evals.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
