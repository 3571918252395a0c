"""The layout's rules, checked by the tools that keep them: a violation fails with the tool's own words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Source modules past this many lines mix concerns; split them (tests and benchmarks aside).
MAX_MODULE_LINES = 450


def run_tool(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff_passes(command):
    result = run_tool(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_follow_the_layers():
    result = run_tool("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_source_modules_stay_small():
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    sources = [name for name in listed if not name.startswith(("tests/", "bench/"))]
    assert sources, "git lists no source module"
    too_long = {name: n for name in sources if (n := len((ROOT / name).read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"over {MAX_MODULE_LINES} lines: {too_long}"


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The same contract on a copy of the package where schemas/ imports the build: lint-imports says so."""
    package = tmp_path / "cosmo_data"
    for name in subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split():
        if not name.startswith(("tests/", "bench/")):
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            (package / name).write_text((ROOT / name).read_text())
    records = package / "schemas" / "records.py"
    records.write_text(records.read_text() + "\nimport cosmo_data.pipeline.build  # noqa: E402,F401\n")
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(BIN), "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "cosmo_data.schemas.records -> cosmo_data.pipeline.build" in result.stdout
