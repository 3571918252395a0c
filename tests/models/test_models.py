"""Model references: tiny random models are created once, offline, and load like real weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from cosmo_data import models
from cosmo_data.models import (
    TINY_BLIP,
    TINY_CLIP,
    TINY_COCA,
    TINY_WHISPER,
    ModelError,
    download_models,
    load_hf_captioner,
    load_open_clip,
    load_whisper,
    tiny_blip_directory,
    tiny_open_clip_checkpoint,
    tiny_whisper_checkpoint,
)
from cosmo_data.schemas.config import BuildConfig


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_tiny_whisper_loads_through_whisper_load_model(cache, monkeypatch):
    import whisper

    calls = []
    real_load = whisper.load_model
    monkeypatch.setattr(whisper, "load_model", lambda name, **kw: calls.append(name) or real_load(name, **kw))
    model = load_whisper(TINY_WHISPER, "cpu")
    checkpoint = models.tiny_dir("whisper") / f"{TINY_WHISPER}.pt"
    assert calls == [str(checkpoint)]
    assert isinstance(model, whisper.model.Whisper)
    assert model.dims.n_vocab == 51865 and model.dims.n_mels == 80 and model.dims.n_audio_state == 64
    assert model.is_multilingual


def test_tiny_open_clip_models_load_through_create_model_and_transforms(cache, monkeypatch):
    import open_clip

    calls = []
    real_create = open_clip.create_model_and_transforms

    def spy(name, **kw):
        calls.append((name, kw["pretrained"]))
        return real_create(name, **kw)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    clip = load_open_clip(TINY_CLIP, None, "cpu", fp16=True)
    coca = load_open_clip(TINY_COCA, None, "cpu", fp16=True)
    assert calls == [
        (TINY_CLIP, str(models.tiny_dir("open_clip") / f"{TINY_CLIP}.pt")),
        (TINY_COCA, str(models.tiny_dir("open_clip") / f"{TINY_COCA}.pt")),
    ]
    assert type(clip.model).__name__ == "CLIP" and type(coca.model).__name__ == "CoCa"
    # fp16 applies on GPU only; the transform is open_clip's own.
    assert clip.dtype == torch.float32 and clip.device == "cpu"
    assert [type(t).__name__ for t in clip.preprocess.transforms][:2] == ["Resize", "CenterCrop"]
    assert clip.tokenizer(["a dog"]).shape == (1, 77)


def test_tiny_blip_loads_through_auto_classes_from_a_directory(cache, monkeypatch):
    from transformers import AutoModelForImageTextToText

    calls = []
    real = AutoModelForImageTextToText.from_pretrained.__func__

    def spy(cls, reference, **kw):
        calls.append(reference)
        return real(cls, reference, **kw)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(spy))
    processor, model = load_hf_captioner(TINY_BLIP, "cpu", fp16=False)
    assert calls == [str(models.tiny_dir("hf") / TINY_BLIP)]
    assert type(model).__name__ == "BlipForConditionalGeneration"
    assert processor.tokenizer.convert_ids_to_tokens(model.config.text_config.bos_token_id) == "[DEC]"


def test_checkpoints_are_created_once_and_reused(cache):
    created = [
        tiny_whisper_checkpoint(),
        tiny_open_clip_checkpoint(TINY_CLIP),
        tiny_open_clip_checkpoint(TINY_COCA),
        tiny_blip_directory(),
    ]
    stamps = [_stamp(path) for path in created]
    load_whisper(TINY_WHISPER, "cpu")
    load_open_clip(TINY_CLIP, None, "cpu", fp16=False)
    load_open_clip(TINY_COCA, None, "cpu", fp16=False)
    load_hf_captioner(TINY_BLIP, "cpu", fp16=False)
    again = [
        tiny_whisper_checkpoint(),
        tiny_open_clip_checkpoint(TINY_CLIP),
        tiny_open_clip_checkpoint(TINY_COCA),
        tiny_blip_directory(),
    ]
    assert again == created
    assert [_stamp(path) for path in again] == stamps
    # No staging leftovers next to the checkpoints.
    assert not [p for p in cache.rglob(".*")]


def _state(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint.get("model_state_dict") or checkpoint["state_dict"]


def test_creation_is_deterministic(tmp_path, monkeypatch):
    made = []
    for name in ("a", "b"):
        monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / name))
        torch.manual_seed(len(made))  # the caller's random state must not matter
        made.append((tiny_whisper_checkpoint(), tiny_open_clip_checkpoint(TINY_COCA), tiny_blip_directory()))
    (whisper_a, coca_a, blip_a), (whisper_b, coca_b, blip_b) = made
    for first, second in ((whisper_a, whisper_b), (coca_a, coca_b)):
        state_a, state_b = _state(first), _state(second)
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
        assert all(torch.isfinite(value).all() for value in state_a.values() if value.is_floating_point())
    assert (blip_a / "model.safetensors").read_bytes() == (blip_b / "model.safetensors").read_bytes()


def test_creation_does_not_disturb_the_callers_random_state(cache):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_whisper_checkpoint()
    assert torch.equal(torch.rand(3), expected)


def test_racing_creators_all_get_one_complete_model(cache):
    results: dict[str, list[Path]] = {"clip": [], "blip": []}
    errors: list[BaseException] = []

    def create() -> None:
        try:
            results["clip"].append(tiny_open_clip_checkpoint(TINY_CLIP))
            results["blip"].append(tiny_blip_directory())
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results["clip"])) == 1 and len(results["clip"]) == 4
    assert len(set(results["blip"])) == 1 and len(results["blip"]) == 4
    assert not [p for p in cache.rglob(".*")]
    load_open_clip(TINY_CLIP, None, "cpu", fp16=False)
    load_hf_captioner(TINY_BLIP, "cpu", fp16=False)


def test_unknown_references_are_clear_errors(cache):
    with pytest.raises(ModelError, match="'small-ish' is neither a whisper model name"):
        load_whisper("small-ish", "cpu")
    with pytest.raises(ModelError, match="cannot load open_clip model 'ViT-Nope'"):
        load_open_clip("ViT-Nope", None, "cpu", fp16=False)
    with pytest.raises(ModelError, match="no pretrained tag"):
        load_open_clip(TINY_CLIP, "openai", "cpu", fp16=False)


@pytest.mark.slow
def test_hub_fetch_failure_is_a_clear_error(tmp_path):
    """Real references with no way to reach their hubs fail with one actionable message each."""
    script = textwrap.dedent(
        """
        from cosmo_data.models import ModelError, load_whisper, load_open_clip, load_hf_captioner
        for load in (lambda: load_whisper("tiny", "cpu"),
                     lambda: load_open_clip("ViT-B-32", "openai", "cpu", False),
                     lambda: load_hf_captioner("Salesforce/blip-image-captioning-base", "cpu", False)):
            try:
                load()
                print("LOADED")
            except ModelError as exc:
                print("ERROR", str(exc).replace("\\n", " "))
        """
    )
    # A dead proxy and an empty cache stand in for a cluster node without internet.
    env = {
        **os.environ,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        models.CACHE_ENV: str(tmp_path / "cosmo"),
    }
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("ERROR", "LOADED"))]
    assert len(lines) == 3, result.stdout + result.stderr
    whisper_error, clip_error, hf_error = lines
    assert whisper_error.startswith("ERROR cannot load whisper model 'tiny'")
    assert clip_error.startswith("ERROR cannot load open_clip model 'ViT-B-32' (pretrained 'openai')")
    assert hf_error.startswith("ERROR cannot load Hugging Face captioner 'Salesforce/blip-image-captioning-base'")
    assert all("download_models" in line for line in lines)


def test_download_models_prepares_tiny_models_offline(cache):
    config = BuildConfig.model_validate(
        {
            "asr": {"model": TINY_WHISPER},
            "caption": {"backend": "hf", "model": TINY_BLIP},
            "clip_score": {"model": TINY_CLIP, "pretrained": None},
        }
    )
    fetched = download_models(config)
    assert [line.split(":")[0] for line in fetched] == ["asr", "caption", "clip_score"]
    assert (models.tiny_dir("whisper") / f"{TINY_WHISPER}.pt").is_file()
    assert (models.tiny_dir("hf") / TINY_BLIP / "config.json").is_file()
    assert (models.tiny_dir("open_clip") / f"{TINY_CLIP}.pt").is_file()
    config.caption.enabled = False
    assert len(download_models(config)) == 2
