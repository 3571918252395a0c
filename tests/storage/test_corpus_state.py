"""The corpus lock: one writer at a time (build, filter, dedup), a dead holder's lock taken over."""

import json
import shutil
import socket
import subprocess
import sys

import pytest
from corpus_factory import build_corpus
from typer.testing import CliRunner

from cosmo_data.cli import app
from cosmo_data.corpus.filter import filter_corpus
from cosmo_data.schemas.config import CurationConfig
from cosmo_data.storage.corpus_state import CorpusLocked, corpus_lock


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("locked") / "out", n_ok=2, n_failed=0, videos_per_group=2).out


@pytest.fixture
def other_process():
    """A live process of this host that is not this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def _hold(corpus, pid: int, host: str | None = None, command: str = "filter") -> None:
    lock = {"host": host or socket.gethostname(), "pid": pid, "command": command, "since": "2026-01-01T00:00:00Z"}
    (corpus / "_state" / "lock.json").write_text(json.dumps(lock))


STRICT = CurationConfig.model_validate({"clip": {"min_brightness": 1000}})


def test_a_running_command_keeps_the_others_out_with_a_message_naming_it(corpus, other_process, tmp_path):
    _hold(corpus, other_process, command="filter")
    videos = sorted(p.read_bytes() for p in (corpus / "videos").glob("*.parquet"))
    try:
        with pytest.raises(CorpusLocked, match=f"`filter` \\(pid {other_process} on "):
            filter_corpus(corpus, STRICT)
        assert sorted(p.read_bytes() for p in (corpus / "videos").glob("*.parquet")) == videos
        source = tmp_path / "ids.txt"
        source.write_text("aaaaaaaaaa0\n")
        result = CliRunner().invoke(app, ["build", "--source", str(source), "--out", str(corpus)])
        assert result.exit_code == 2 and "is being written by `filter`" in result.output
        result = CliRunner().invoke(app, ["dedup", str(corpus)])
        assert result.exit_code == 2 and "remove " in result.output and "lock.json" in result.output
    finally:
        (corpus / "_state" / "lock.json").unlink()


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over_and_released(corpus, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _hold(corpus, int(gone.stdout))
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    summary = filter_corpus(copy, STRICT)
    assert summary.rewrite is not None and not (copy / "_state" / "lock.json").exists()


def test_a_lock_of_another_host_is_never_guessed_stale_and_the_holder_nests(corpus):
    _hold(corpus, 1, host="another-node")
    try:
        with pytest.raises(CorpusLocked, match="another-node"):
            with corpus_lock(corpus, "dedup"):
                pass
    finally:
        (corpus / "_state" / "lock.json").unlink()
    with corpus_lock(corpus, "build"):
        with corpus_lock(corpus, "mark exact duplicates"):  # the build's own closing pass
            pass
        assert json.loads((corpus / "_state" / "lock.json").read_text())["command"] == "build"
    assert not (corpus / "_state" / "lock.json").exists()
