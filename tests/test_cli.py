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
    for command in ("stats", "validate", "narrate"):
        assert_one_line_error(run(command, str(tmp_path), cwd=tmp_path), 2, "not a built corpus")


def test_set_values_keep_yaml_words_as_strings():
    from cosmo_data.cli import parse_overrides

    pairs = ["asr.language=no", "a=on", "b=off", "c=yes", "d=true", "e=False", "f=3", "g=2.5", "h=null"]
    pairs += ["i=[native, mmc4]", "j={cpus: 2, gpus: 0}", "k=~", "l=Y"]
    assert parse_overrides(pairs) == {
        "asr.language": "no",
        "a": "on",
        "b": "off",
        "c": "yes",
        "d": True,
        "e": False,
        "f": 3,
        "g": 2.5,
        "h": None,
        "i": ["native", "mmc4"],
        "j": {"cpus": 2, "gpus": 0},
        "k": None,
        "l": "Y",
    }


def test_set_language_no_reaches_the_build(tmp_path):
    """--set asr.language=no (Norwegian) passes the config; the build then stops at the empty source."""
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    result = run("build", "--source", "empty.txt", "--out", "o", "--set", "asr.language=no", cwd=tmp_path)
    assert_one_line_error(result, 2, "the sources hold no video")


def test_retry_failed_names_failure_statuses_only(tmp_path):
    (tmp_path / "ids.txt").write_text("dQw4w9WgXcQ\n")
    result = run("build", "--source", "ids.txt", "--out", "o", "--retry-status", "bogus", cwd=tmp_path)
    assert_one_line_error(result, 2, "bogus is not a failure status")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "options, expected",
    [
        ([], None),
        (["--retry-failed"], set()),
        (["--retry-failed", "--retry-status", "disk_full,rate_limited"], {"disk_full", "rate_limited"}),
        (["--retry-status", "deadline_exceeded", "--retry-status", "disk_full"], {"deadline_exceeded", "disk_full"}),
    ],
)
def test_retry_options_reach_the_build(tmp_path, monkeypatch, options, expected):
    from typer.testing import CliRunner

    from cosmo_data.cli import app
    from cosmo_data.pipeline import build as build_module

    seen = {}

    def fake_build(sources, out, settings, *, retry_failed, exclude_ids=None):
        seen["retry"] = retry_failed
        return build_module.BuildResult(out=out, sources=1, ok=1)

    monkeypatch.setattr(build_module, "build", fake_build)
    (tmp_path / "ids.txt").write_text("dQw4w9WgXcQ\n")
    result = CliRunner().invoke(
        app, ["build", "--source", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "o")] + options
    )
    assert result.exit_code == 0, result.output
    assert seen["retry"] == expected


def test_help_shows_what_a_user_types():
    """Options read as typed (`--set KEY=VALUE`, a bare `--retry-failed`), never as Python types (`<bool>`)."""
    import typer
    from typer.testing import CliRunner

    from cosmo_data.cli import app

    runner = CliRunner()
    commands = list(typer.main.get_command(app).commands)
    assert {"build", "stats", "train"} <= set(commands)
    for command in [None, *commands]:
        result = runner.invoke(app, [command, "--help"] if command else ["--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        options = [line.strip() for line in result.output.splitlines() if line.lstrip().startswith("-")]
        assert any(line.startswith("--help") for line in options), result.output
        for line in options:
            assert "<" not in line.split("  ")[0], f"{command}: {line}"
    build_help = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"}).output
    for typed in ("--source SOURCE", "--out DIR", "--config FILE", "--set KEY=VALUE", "--ray-address ADDRESS"):
        assert typed in build_help
    assert "--retry-failed " in build_help and "--retry-failed <" not in build_help
