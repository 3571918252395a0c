"""Entry points: train() for one process (alone or one rank of torchrun), run_cli() for the command line,
which starts N ranks through torchrun's own launcher (torch.distributed.run --standalone) for --nproc N.
`torchrun -m cosmo_data.train ...` on a cluster runs the same module every local launch runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cosmo_data.train.config import SourceConfig, TrainConfig, TrainError, load_train_config
from cosmo_data.train.shards import ShardSource, resolve_source, resolve_sources


def _prepare(
    shards: list[str], config_path: Path | None, steps: int | None, overrides: dict[str, Any]
) -> tuple[TrainConfig, list[ShardSource], list[ShardSource]]:
    """Everything that can be wrong with the input, checked before any model loads."""
    config = load_train_config(config_path, {**overrides, **({"run.steps": steps} if steps is not None else {})})
    sources = resolve_sources(list(shards), config.data.sources)
    eval_sources = [
        resolve_source(SourceConfig(name=f"eval-{index}", folder=folder))
        for index, folder in enumerate(config.data.eval_folders)
    ]
    return config, sources, eval_sources


def train(shards: list[str], out: Path, config_path: Path | None, steps: int | None, overrides: dict[str, Any]):
    """Train in this process until step `steps` (default: run.steps of the config), resuming from the
    newest checkpoint in out/checkpoints. Under torchrun this process is one rank. Returns a TrainResult."""
    import torch.distributed as dist

    from cosmo_data.train.runner import Trainer, write_run_config  # torch and transformers load here

    config, sources, eval_sources = _prepare(shards, config_path, steps, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, sources, eval_sources, out)
    try:
        if trainer.env.main:
            write_run_config(out, config, sources)
        return trainer.fit(config.run.steps)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def run_cli(
    shards: list[str], out: Path, config: Path | None, steps: int | None, nproc: int, overrides: dict[str, Any]
) -> int:
    """`cosmo-data train`: raises TrainError for bad input; returns the exit status of the training."""
    if nproc < 1:
        raise TrainError(f"--nproc must be at least 1, got {nproc}")
    _prepare(shards, config, steps, overrides)  # fail here, with one message, not in N ranks
    if nproc == 1 or _under_torchrun():
        train(shards, out, config, steps, overrides)
        return 0
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    arguments = [*shards, "--out", str(out)]
    if config is not None:
        arguments += ["--config", str(config)]
    if steps is not None:
        arguments += ["--steps", str(steps)]
    for key, value in overrides.items():
        arguments += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: __main__ reads it back exactly
    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "cosmo_data.train", *arguments])
    except ChildFailedError as exc:
        print(f"error: training failed on {len(exc.failures)} of {nproc} ranks (their output is above)", flush=True)
        return 1
    return 0
