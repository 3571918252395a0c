"""`python -m cosmo_data.train SHARDS... --out RUN [--config FILE] [--steps N] [--nproc N] [--set key=value]`,
also as `torchrun --nproc-per-node N -m cosmo_data.train ...` (each rank runs this module)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cosmo_data.train.config import TrainError
from cosmo_data.train.launch import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmo_data.train", description=__doc__)
    parser.add_argument("shards", nargs="+", help="shard folders, or name=weight:folder for a weighted mixture")
    parser.add_argument("--out", type=Path, required=True, help="run folder (reruns resume from its checkpoints)")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (ignored under torchrun)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = {}
    try:
        for pair in args.overrides:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise TrainError(f"--set expects key=value (e.g. run.steps=10), got {pair!r}")
            overrides[key.strip()] = yaml.safe_load(value)
        return run_cli(args.shards, args.out, args.config, args.steps, args.nproc, overrides)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
