"""Whole training runs of the tiny config on CPU: the loss falls, a resumed run matches an uninterrupted
one, two processes train together (gloo), and a run killed with -9 resumes without duplicated steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY
from safetensors.torch import load_file

from cosmo_data.train import train


def metrics(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a tag, read back by TensorBoard's own reader (purged steps of a resumed run gone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cosmo_data.train", *arguments, "--config", str(TINY)]


@pytest.mark.slow
def test_tiny_config_learns_and_writes_its_run_folder(corpus, tmp_path):
    run = tmp_path / "run"
    result = train(
        [f"video=1:{corpus / 'cosmo'}", f"web=1:{corpus / 'mmc4'}"],
        run,
        TINY,
        30,
        {"data.eval_folders": [str(corpus / "native")]},
    )
    assert result.step == 30 and result.resumed_from is None
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 31))
    first, last = records[0]["loss"], min(r["loss"] for r in records[-5:])
    assert last <= 0.9 * first, (first, last)
    assert set(records[0]) >= {
        "step", "loss", "lm_loss", "contrastive_loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s",
        "data_wait_fraction", "world_size", "skipped_samples", "mfu",
    }  # fmt: skip
    assert records[0]["mfu"] is None  # no known peak on a CPU
    assert records[0]["skipped"] == {}
    logged = tensorboard_scalars(run, "train/loss")
    assert [step for step, _ in logged] == list(range(1, 31))
    assert all(abs(value - r["loss"]) <= 1e-6 * abs(r["loss"]) for (_, value), r in zip(logged, records))
    evaluations = metrics(run, "eval.jsonl")
    assert [e["step"] for e in evaluations] == [10, 20, 30]
    assert [step for step, _ in tensorboard_scalars(run, "eval/val_loss")] == [10, 20, 30]
    assert evaluations[0]["dropped_samples"] == 0
    assert evaluations[-1]["val_loss"] < evaluations[0]["val_loss"]
    assert 0 <= evaluations[-1]["text_to_visual_r@1"] <= evaluations[-1]["text_to_visual_r@5"] <= 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-000000{s}" for s in (10, 20, 30)]
    weights = load_file(run / "checkpoints" / "step-00000030" / "trainable.safetensors")
    assert any(name.startswith("resampler.") for name in weights)
    assert any(".cross_attention.attn_gate" in name for name in weights)
    assert not any(name.startswith("vision.") for name in weights)  # frozen weights are not saved


@pytest.mark.slow
def test_a_resumed_run_matches_an_uninterrupted_one(corpus, tmp_path):
    shards = [f"video=1:{corpus / 'cosmo'}", f"web=2:{corpus / 'mmc4'}", str(corpus / "native")]
    # Two data workers, stopped after an odd number of batches: the resumed loader's roles rotate.
    settings = {"optim.total_steps": 8, "data.workers": 2, "run.checkpoint_every": 100}
    train(shards, tmp_path / "whole", TINY, 8, settings)
    train(shards, tmp_path / "parts", TINY, 3, settings)
    resumed = train(shards, tmp_path / "parts", TINY, 8, settings)
    assert resumed.resumed_from == 3
    whole, parts = metrics(tmp_path / "whole"), metrics(tmp_path / "parts")
    assert [r["step"] for r in parts] == list(range(1, 9))
    for a, b in zip(whole, parts):
        for key in ("loss", "lm_loss", "contrastive_loss", "lr", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]), (a["step"], key, a[key], b[key])
    # A rerun that is already at its target trains nothing.
    assert train(shards, tmp_path / "parts", TINY, 8, settings).step == 8
    assert len(metrics(tmp_path / "parts")) == 8


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_together(corpus, tmp_path, parallel):
    """DDP through --nproc 2 (torchrun's launcher inside); FSDP2 with activation checkpointing through
    torchrun itself, as on a cluster. Both on gloo."""
    run = tmp_path / "run"
    arguments = command(str(corpus / "mmc4"), "--out", str(run), "--steps", "3")
    if parallel == "ddp":
        arguments += ["--nproc", "2"]
    else:
        torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=2"]
        arguments = [*torchrun, *arguments[1:]]
        arguments += ["--set", "run.parallel=fsdp", "--set", "run.activation_checkpointing=true"]
    done = subprocess.run(arguments, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["world_size"] == 2 for r in records)
    assert (run / "checkpoints" / "step-00000003" / "trainable.safetensors").is_file()


@pytest.mark.slow
def test_kill_9_then_rerun_has_no_duplicated_step(corpus, tmp_path):
    run = tmp_path / "run"
    arguments = command(str(corpus / "cosmo"), "--out", str(run), "--steps", "40", "--set", "run.checkpoint_every=4")
    process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if len(lines) >= 6:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its data worker, mid-run
    process.wait()
    logged = [
        json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")
    ]
    assert max(logged) >= 6

    done = subprocess.run(
        arguments[:-4] + ["--steps", "12"] + arguments[-2:], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = int(done.stdout.split("resuming from step ")[1].split()[0])
    assert resumed % 4 == 0 and 4 <= resumed <= max(logged)
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))
    # TensorBoard drops what the killed run logged past its checkpoint too: each step once, the rerun's.
    logged = tensorboard_scalars(run, "train/loss")
    assert [step for step, _ in logged] == list(range(1, 13))
    assert [value for _, value in logged] == pytest.approx([r["loss"] for r in metrics(run)], rel=1e-6)


def test_bad_input_exits_2_with_one_line(tmp_path):
    done = subprocess.run(
        command(str(tmp_path / "missing"), "--out", str(tmp_path / "run")), capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: shard folder {tmp_path / 'missing'} does not exist"
