"""Real Whisper tiny.en from its registry package: verified by sha256, loaded by both backends."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cosmo_data import models
from cosmo_data.models import ModelError, load_whisper
from cosmo_data.models import asr as asr_models
from cosmo_data.models.asr import (
    PACKAGED_WHISPER,
    PackagedWhisper,
    faster_whisper_reference,
    load_faster_whisper,
    packaged_whisper_folder,
    read_ctranslate2,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_packaged_tiny_en_resolves_to_its_verified_folder():
    folder = packaged_whisper_folder("tiny.en")
    assert folder is not None and (folder / "model.bin").stat().st_size == 75_537_502
    assert faster_whisper_reference("tiny.en") == str(folder)
    assert faster_whisper_reference("distil-large-v3") == "distil-large-v3"  # the library's own download


def _fake_package(tmp_path: Path, monkeypatch, change: str | None) -> None:
    """A copy of tiny.en's package under another module name, with one file (if any) changed by one byte."""
    real = packaged_whisper_folder("tiny.en")
    module = tmp_path / "swapped_models"
    (module / "model").mkdir(parents=True)
    (module / "__init__.py").write_text("")
    for name in PACKAGED_WHISPER["tiny.en"].sha256:
        target = module / "model" / name
        if name == change:
            data = bytearray((real / name).read_bytes())
            data[len(data) // 2] ^= 1
            target.write_bytes(bytes(data))
        else:
            os.symlink(real / name, target)
    monkeypatch.syspath_prepend(str(tmp_path))
    packaged = PackagedWhisper("swapped-models==0.1.0", "swapped_models", "model", PACKAGED_WHISPER["tiny.en"].sha256)
    monkeypatch.setitem(asr_models.PACKAGED_WHISPER, "tiny.en", packaged)


@pytest.mark.parametrize("change", ["model.bin", "tokenizer.json"])
def test_a_changed_model_file_fails_loudly_in_both_backends(tmp_path, monkeypatch, cache, change):
    _fake_package(tmp_path, monkeypatch, change)
    expected = PACKAGED_WHISPER["tiny.en"].sha256[change]
    pattern = rf"swapped_models/model/{change} has sha256 [0-9a-f]{{64}}, but the project recorded {expected}"
    with pytest.raises(ModelError, match=pattern):
        load_faster_whisper("tiny.en", "cpu", fp16=False)
    with pytest.raises(ModelError, match=pattern):
        load_whisper("tiny.en", "cpu")
    assert not list(cache.rglob("*.pt")), "nothing is converted from a changed file"


def test_a_missing_model_file_fails_loudly(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, change=None)
    (tmp_path / "swapped_models" / "model" / "vocabulary.txt").unlink()
    with pytest.raises(ModelError, match="vocabulary.txt is missing"):
        packaged_whisper_folder("tiny.en")


def test_tiny_en_converts_to_an_openai_whisper_checkpoint_loaded_strictly(cache):
    import whisper

    variables = read_ctranslate2(packaged_whisper_folder("tiny.en") / "model.bin")
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # an alias
    model = load_whisper("tiny.en", "cpu")
    assert isinstance(model, whisper.model.Whisper) and not model.is_multilingual
    assert (model.dims.n_vocab, model.dims.n_audio_state, model.dims.n_audio_layer) == (51864, 384, 4)
    [checkpoint] = cache.rglob("tiny.en-*.pt")
    before = checkpoint.stat().st_mtime_ns
    load_whisper("tiny.en", "cpu")
    assert checkpoint.stat().st_mtime_ns == before, "converted once, then reused"


def test_unknown_faster_whisper_names_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="'tiny-random' is neither a faster-whisper model name"):
        faster_whisper_reference("tiny-random")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ModelError, match="cannot load faster-whisper model"):
        load_faster_whisper(str(not_a_model), "cpu", fp16=False)
    shutil.rmtree(not_a_model)
