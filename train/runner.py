"""The training loop: one process per rank (a lone process, or one of torchrun's).

AdamW (no weight decay on norms, biases, gates and embeddings), linear warmup then cosine decay,
gradient accumulation, clipping, bf16 autocast on GPU only, DDP or FSDP2, optional activation
checkpointing and torch.compile. A rerun on the same RUN folder resumes from its newest checkpoint;
what a killed run logged past that checkpoint is dropped from metrics.jsonl and eval.jsonl first.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cosmo_data.train.checkpoint import (
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
    saved_checkpoints,
    truncate_jsonl,
)
from cosmo_data.train.config import TrainConfig
from cosmo_data.train.data import Collator, eval_batches, skip_breakdown, skip_counts, train_loader
from cosmo_data.train.metrics import FlopCounter, MetricsLog, peak_flops
from cosmo_data.train.model import CosmoModel, decoder_layers, retrieval_recall
from cosmo_data.train.shards import ShardSource
from cosmo_data.train.weights import load_pretrained


@dataclass
class TrainResult:
    run: Path
    step: int  # the step the run stands at now
    resumed_from: int | None
    checkpoint: Path | None
    last_metrics: dict[str, Any] | None


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun's environment when there is one (gloo on CPU, nccl on GPU), else a lone process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(dist.get_rank() if dist.is_initialized() else 0, world_size, device)


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 and id(parameter) not in embeddings else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _wrap(model: CosmoModel, config: TrainConfig, env: Dist) -> nn.Module:
    if config.run.activation_checkpointing:
        model.enable_activation_checkpointing()
    if env.world_size > 1 and config.run.parallel == "ddp":
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    elif env.world_size > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        bf16 = env.device.type == "cuda" and config.run.bf16
        # HF decoder layers return a reshaped view; nothing here changes a layer's output in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16
            else MixedPrecisionPolicy()
        )
        for layer in decoder_layers(model.lm):  # one all-gather per layer (with its cross-attention block)
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    return torch.compile(model) if config.run.compile else model


def _set_gradient_sync(model: nn.Module, enabled: bool):
    """DDP's no_sync / FSDP2's gradient sync switch: accumulation micro-batches skip the all-reduce."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
    return nullcontext()


def _all_reduce(values: list[float], env: Dist, op=None) -> list[float]:
    if env.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor.tolist()


class Trainer:
    def __init__(self, config: TrainConfig, sources: list[ShardSource], eval_sources: list[ShardSource], run: Path):
        self.config, self.sources, self.eval_sources, self.run = config, sources, eval_sources, run
        self.env = env = init_distributed()
        torch.manual_seed(config.run.seed)  # identical initial weights on every rank (FSDP2 does not broadcast)
        pretrained = load_pretrained(config)
        self.core = CosmoModel(pretrained, config).to(env.device)
        self.flops = FlopCounter(self.core)
        self.model = _wrap(self.core, config, env)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        optim = config.optim
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(self.model, optim.weight_decay),
            lr=optim.lr,
            betas=optim.betas,
        )
        total = config.schedule_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, optim.warmup_steps, total, optim.min_lr_ratio)
        )
        image_size = pretrained.vision.image_size
        self.collator = Collator(
            pretrained.tokenizer, pretrained.to_pixels, config.data, pretrained.media_token_ids,
            image_size if isinstance(image_size, int) else image_size[0],
        )  # fmt: skip
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if env.device.type == "cuda" and config.run.bf16
            else nullcontext()
        )
        self.peak = peak_flops(env.device)

    # -- resume ------------------------------------------------------------------------------------

    def _resume(self) -> tuple[int, int | None, dict[int, dict], int, str]:
        """(step, resumed_from, data positions, batches consumed, stream seed prefix)."""
        env, seed = self.env, self.config.run.seed
        prefix = f"{seed}/{env.rank}"
        saved = saved_checkpoints(self.run)
        if not saved:
            random.seed(seed + env.rank)
            np.random.seed(seed + env.rank)
            torch.manual_seed(seed + env.rank)
            return 0, None, {}, 0, prefix
        step, path = saved[-1]
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        ranks = state["ranks"]
        if env.main:
            dropped = truncate_jsonl(self.run / "metrics.jsonl", step) + truncate_jsonl(self.run / "eval.jsonl", step)
            note = f"; dropped {dropped} logged lines past it" if dropped else ""
            print(f"resuming from step {step} ({path}){note}", flush=True)
        mine = ranks[env.rank] if env.rank < len(ranks) else None
        restore_rng(mine["rng"] if mine else ranks[0]["rng"])
        position = mine["data"] if mine else None
        if len(ranks) == env.world_size and position and position["roles_total"] == max(self.config.data.workers, 1):
            return step, step, position["roles"], position["batches"], prefix
        if env.main:
            print(
                f"note: the data position of step {step} was saved for {len(ranks)} ranks x "
                f"{position['roles_total'] if position else '?'} workers; streams restart at a new seed",
                flush=True,
            )
        return step, step, {}, 0, f"{prefix}/from-step-{step}"

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, target_steps: int) -> TrainResult:
        config, env = self.config, self.env
        step, resumed_from, positions, batches, prefix = self._resume()
        if step >= target_steps:
            if env.main:
                print(f"already at step {step} (target {target_steps}); nothing to train", flush=True)
            return TrainResult(self.run, step, resumed_from, saved_checkpoints(self.run)[-1][1], None)
        roles_total = max(config.data.workers, 1)
        loader = train_loader(
            self.sources, self.collator, config.data, prefix, positions, batches, env.device.type == "cuda"
        )
        batches_iter = iter(loader)
        log = MetricsLog(self.run, step, target_steps, config.run.log_every_s) if env.main else None
        accumulation = config.optim.accumulation
        record, checkpoint = None, None
        self.model.train()
        try:
            while step < target_steps:
                started, waited = time.perf_counter(), 0.0
                self.optimizer.zero_grad(set_to_none=True)
                totals = torch.zeros(3, dtype=torch.float64)  # loss, lm, contrastive (sums of micro-batch means)
                tokens = frames = 0
                for micro in range(accumulation):
                    wait_started = time.perf_counter()
                    role, batch, position = next(batches_iter)
                    waited += time.perf_counter() - wait_started
                    positions[role] = position
                    batches += 1
                    batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
                    with _set_gradient_sync(self.model, micro == accumulation - 1), self.autocast:
                        output = self.model(batch)
                        (output.loss / accumulation).backward()
                    totals += torch.tensor([output.loss.item(), output.lm_loss.item(), output.contrastive_loss.item()])
                    tokens += int(batch["attention_mask"].sum())
                    frames += int(batch["frame_mask"].sum())
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, config.optim.grad_clip))
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                step += 1
                if env.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
                skips = skip_counts(list(positions.values()), self.sources)
                loss, lm_loss, contrastive_loss, waited_sum, tokens, frames, *skips = _all_reduce(
                    [*(totals / accumulation).tolist(), waited / elapsed, tokens, frames, *skips], env
                )
                world = env.world_size
                flops = self.flops.step_flops(int(tokens), int(frames))
                record = {
                    "step": step,
                    "loss": loss / world,
                    "lm_loss": lm_loss / world,
                    "contrastive_loss": contrastive_loss / world,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": config.data.micro_batch * accumulation * world / elapsed,
                    "tokens_per_s": tokens / elapsed,
                    "data_wait_fraction": waited_sum / world,
                    "world_size": world,
                    "skipped_samples": int(sum(skips)),
                    "skipped": skip_breakdown(skips, self.sources),  # by "source/reason"
                    "mfu": flops / elapsed / (self.peak * world) if self.peak else None,
                    "step_tflops": flops / 1e12,  # train/metrics.py's count, all ranks together
                }
                if log:
                    log.step(record)
                if step % config.run.checkpoint_every == 0 or step == target_steps:
                    rank_state = {
                        "rng": rng_state(),
                        "data": {"roles": positions, "batches": batches, "roles_total": roles_total},
                    }
                    checkpoint = save_checkpoint(
                        self.run, step, self.model, self.optimizer, self.scheduler, rank_state,
                        config.run.keep_checkpoints, config.model_dump(mode="json"),
                    )  # fmt: skip
                if self.eval_sources and step % config.run.eval_every == 0:
                    self.evaluate(step, log)
        finally:
            if log:
                log.close()
            del batches_iter, loader
        return TrainResult(self.run, step, resumed_from, checkpoint, record)

    @torch.no_grad()
    def evaluate(self, step: int, log: MetricsLog | None) -> dict[str, Any]:
        """Validation loss and clip<->sentence retrieval over the held-out shards, across all ranks."""
        config, env = self.config, self.env
        self.model.eval()
        forward = self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model
        lm_losses, contrastive_losses, texts, visuals = [], [], [], []
        dropped: dict[str, int] = {}
        # Random state is set aside so that evaluating does not change the training that follows.
        with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
            for batch in eval_batches(
                self.eval_sources,
                self.collator,
                config.data,
                env.rank,
                env.world_size,
                config.run.eval_batches,
                dropped,
            ):
                batch = {k: v.to(env.device) for k, v in batch.items()}
                with self.autocast:
                    output = forward(batch)
                lm_losses.append(output.lm_loss.item())
                contrastive_losses.append(output.contrastive_loss.item())
                texts.append(output.text_latents.float().cpu())
                visuals.append(output.visual_latents.float().cpu())
        self.model.train()
        pairs = [(torch.cat(texts), torch.cat(visuals))]
        if env.world_size > 1:
            gathered: list[Any] = [None] * env.world_size
            dist.all_gather_object(gathered, pairs[0])
            pairs = gathered
        if env.world_size > 1:
            every: list[Any] = [None] * env.world_size
            dist.all_gather_object(every, dropped)
            dropped = {key: sum(d.get(key, 0) for d in every) for key in sorted({k for d in every for k in d})}
        lm_loss, contrastive_loss = _all_reduce([float(np.mean(lm_losses)), float(np.mean(contrastive_losses))], env)
        record = {
            "step": step,
            "val_loss": lm_loss / env.world_size,
            "val_contrastive_loss": contrastive_loss / env.world_size,
            "pairs": sum(len(text) for text, _ in pairs),
            "dropped_samples": sum(dropped.values()),
            "dropped": dropped,  # held-out samples left out, by "source/reason"
            **retrieval_recall(torch.cat([t for t, _ in pairs]), torch.cat([v for _, v in pairs])),
        }
        if log:
            log.evaluation(record)
        return record


def write_run_config(run: Path, config: TrainConfig, sources: list[ShardSource]) -> None:
    staging = run / ".run.json.tmp"
    described = {
        "config": config.model_dump(mode="json"),
        "sources": [{"name": s.name, "weight": s.weight, "layout": s.layout, "tars": len(s.tars)} for s in sources],
    }
    staging.write_text(json.dumps(described, indent=2), encoding="utf-8")
    os.replace(staging, run / "run.json")
