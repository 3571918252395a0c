"""Per-step metrics: RUN/metrics.jsonl (one line per optimizer step), TensorBoard events in
RUN/tensorboard/, progress on stdout (a bar redrawn in place on a terminal, else a plain line every
run.log_every_s seconds); the FLOPs behind MFU.

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
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

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


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Step, loss, tokens/s and ETA on one line. On a terminal a bar redrawn in place (at most every
    0.2 s); elsewhere (a log file, `ray job logs`, CI) a plain line every `every_s` seconds and at the
    last step. The ETA is the remaining steps at the rate of the last RATE_WINDOW steps."""

    RATE_WINDOW = 50
    BAR_WIDTH = 24

    def __init__(
        self,
        first_step: int,
        total_steps: int,
        every_s: float,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_steps, self.every_s, self.clock = total_steps, every_s, clock
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.recent: deque[tuple[float, int]] = deque([(clock(), first_step)], maxlen=self.RATE_WINDOW + 1)
        self.shown_at: float | None = None
        self.bar_drawn = False

    def line(self, record: dict[str, Any]) -> str:
        (then, first), (now, step) = self.recent[0], self.recent[-1]
        eta = (self.total_steps - step) * (now - then) / (step - first) if step > first else None
        mfu = f" mfu {record['mfu']:.1%}" if record.get("mfu") is not None else ""
        skipped = f" | skipped {record['skipped_samples']}" if record.get("skipped_samples") else ""
        return (
            f"step {step}/{self.total_steps} loss {record['loss']:.4f} lr {record['lr']:.2e} | "
            f"{record['tokens_per_s']:,.0f} tokens/s{mfu} data wait {record['data_wait_fraction']:.0%}{skipped} | "
            f"ETA {_clock_text(eta) if eta is not None else '?'}"
        )

    def update(self, record: dict[str, Any]) -> None:
        now, step = self.clock(), record["step"]
        self.recent.append((now, step))
        last = step >= self.total_steps
        if self.live:
            if last or self.shown_at is None or now - self.shown_at >= 0.2:
                done = int(self.BAR_WIDTH * step / self.total_steps)
                bar = "#" * done + "-" * (self.BAR_WIDTH - done)
                self.stream.write(f"\r\033[K[{bar}] {self.line(record)}" + ("\n" if last else ""))
                self.stream.flush()
                self.shown_at, self.bar_drawn = now, not last
        elif last or self.shown_at is None or now - self.shown_at >= self.every_s:
            print(self.line(record), file=self.stream, flush=True)
            self.shown_at = now

    def message(self, text: str) -> None:
        """A line of its own (an evaluation), above the bar on a terminal."""
        if self.bar_drawn:
            self.stream.write("\r\033[K")
            self.bar_drawn = False
            self.shown_at = None  # the bar comes back at the next step
        print(text, file=self.stream, flush=True)


def _scalars(record: dict[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    """A record's numbers as TensorBoard tags; dicts (skips by source/reason) one tag per key."""
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}/{key}")
        elif key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}/{key}", value


class MetricsLog:
    """Rank 0's writer of metrics.jsonl / eval.jsonl, TensorBoard events and the progress on stdout."""

    def __init__(self, run: Path, first_step: int, total_steps: int, log_every_s: float):
        self.metrics = open(run / "metrics.jsonl", "a", encoding="utf-8")
        self.evals = open(run / "eval.jsonl", "a", encoding="utf-8")
        # purge_step drops events a killed run wrote past the checkpoint it resumes from.
        self.tensorboard = SummaryWriter(str(run / "tensorboard"), purge_step=first_step + 1)
        self.progress = Progress(first_step, total_steps, log_every_s)

    def _write(self, stream, record: dict[str, Any], prefix: str) -> None:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        for tag, value in _scalars(record, prefix):
            self.tensorboard.add_scalar(tag, value, record["step"])

    def step(self, record: dict[str, Any]) -> None:
        self._write(self.metrics, record, "train")
        self.progress.update(record)

    def evaluation(self, record: dict[str, Any]) -> None:
        self._write(self.evals, record, "eval")
        recalls = " ".join(f"{k} {v:.2f}" for k, v in record.items() if "_r@" in k)
        dropped = f" | dropped {record['dropped']}" if record.get("dropped") else ""
        self.progress.message(f"eval step {record['step']}: val loss {record['val_loss']:.4f} | {recalls}{dropped}")

    def close(self) -> None:
        self.metrics.close()
        self.evals.close()
        self.tensorboard.close()
