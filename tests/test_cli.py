"""The CLI maps usage and config errors to one clear line and exit code 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [str(Path(sys.executable).with_name("cosmo-data"))]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_source_file(tmp_path):
    assert_one_line_error(
        run("build", "--source", "nope.txt", "--out", "o", cwd=tmp_path), 2, "nope.txt does not exist"
    )


@pytest.mark.parametrize(
    "config_text, needle",
    [("asr: [oops\n", "not valid YAML"), ("asr:\n  modle: x\n", "asr.modle")],
)
def test_unusable_config(tmp_path, config_text, needle):
    (tmp_path / "ids.txt").write_text("dQw4w9WgXcQ\n")
    (tmp_path / "c.yaml").write_text(config_text)
    result = run("build", "--source", "ids.txt", "--config", "c.yaml", cwd=tmp_path)
    assert_one_line_error(result, 2, needle)


def test_unreadable_config_path(tmp_path):
    (tmp_path / "ids.txt").write_text("dQw4w9WgXcQ\n")
    result = run("build", "--source", "ids.txt", "--config", "missing.yaml", cwd=tmp_path)
    assert_one_line_error(result, 2, "cannot read config")


def test_bad_override(tmp_path):
    (tmp_path / "ids.txt").write_text("dQw4w9WgXcQ\n")
    result = run("build", "--source", "ids.txt", "--set", "asr.model", cwd=tmp_path)
    assert_one_line_error(result, 2, "--set expects key=value")


def test_unreachable_ray_address(tmp_path):
    (tmp_path / "ids.txt").write_text("dQw4w9WgXcQ\n")
    result = run("build", "--source", "ids.txt", "--out", "o", "--ray-address", "127.0.0.1:1", cwd=tmp_path)
    assert_one_line_error(result, 2, "cannot reach Ray at 127.0.0.1:1")


def test_commands_on_a_folder_that_is_no_corpus(tmp_path):
    for command in ("stats", "validate"):
        assert_one_line_error(run(command, str(tmp_path), cwd=tmp_path), 2, "not a built corpus")
