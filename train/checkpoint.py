"""Checkpoints in RUN/checkpoints/step-NNNNNNNN/: state.pt (trainable weights, optimizer, scheduler,
every rank's RNG and data position) and trainable.safetensors (the trainable weights alone, to export).

A checkpoint is written under a temporary name and renamed into place, so a folder named step-* is
always complete; the newest keep_checkpoints are kept. Frozen weights are not saved: they come from the
pretrained references in the config. Weights and optimizer state go through
torch.distributed.checkpoint.state_dict as full (unsharded) state dicts keyed by parameter names, so
one format serves a single process, DDP and FSDP.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
WEIGHTS_FILE = "trainable.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / CHECKPOINTS / f"step-{step:08d}"


def saved_checkpoints(run: Path) -> list[tuple[int, Path]]:
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in folder.iterdir() if (m := _STEP_DIR.match(path.name))]
    return sorted((step, path) for step, path in found if (path / STATE_FILE).is_file())


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(value: Any) -> list[Any]:
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _distinct_tensors(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (OPT's head is tied to its input embeddings)."""
    seen: set[int] = set()
    distinct = {}
    for name, tensor in weights.items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        distinct[name] = tensor.contiguous()
    return distinct


def save_checkpoint(
    run: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank_state: dict[str, Any],
    keep: int,
    config: dict[str, Any],
) -> Path:
    """Collective: every rank calls it; rank 0 (or the only process) writes."""
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_OPTIONS)
    ranks = _gather(rank_state)
    target = checkpoint_dir(run, step)
    if not dist.is_initialized() or dist.get_rank() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            torch.save(
                {
                    "step": step,
                    "model": model_state,
                    "optimizer": optimizer_state,
                    "scheduler": scheduler.state_dict(),
                    "ranks": ranks,
                    "world_size": len(ranks),
                },
                staging / STATE_FILE,
            )
            save_file(_distinct_tensors(model_state), staging / WEIGHTS_FILE, metadata={"step": str(step)})
            (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
            if target.exists():  # a checkpoint of this step from a run killed after its rename
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for _, old in saved_checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in target.parent.glob(".step-*"):  # staging folders of runs killed while saving
            shutil.rmtree(leftover, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return target


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer and scheduler in place; returns the saved state (step, per-rank states)."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
    scheduler.load_state_dict(state["scheduler"])
    return state


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Keep the lines of steps up to last_step (a killed run's later lines, and a torn last line, go).
    Returns how many lines were dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(staging, path)
    return dropped
