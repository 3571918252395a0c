"""Bad input fails early with one clear TrainError; shard layouts are recognised from their members."""

from __future__ import annotations

import pytest
from conftest import TINY

from cosmo_data.train import TrainError, run_cli
from cosmo_data.train.config import load_train_config
from cosmo_data.train.shards import detect_layout, parse_source, resolve_sources


def test_each_layout_is_recognised(corpus):
    for layout in ("native", "mmc4", "cosmo"):
        assert detect_layout(corpus / layout / "000000.tar") == layout


def test_weighted_mixture_spec_and_bare_folders(corpus):
    sources = resolve_sources([f"video=2.5:{corpus / 'cosmo'}", str(corpus / "mmc4")], [])
    assert [(s.name, s.weight, s.layout, len(s.tars)) for s in sources] == [
        ("video", 2.5, "cosmo", 4),
        ("mmc4", 1.0, "mmc4", 4),
    ]
    assert parse_source("/data/a=b/shards").folder.as_posix() == "/data/a=b/shards"


@pytest.mark.parametrize(
    ("shards", "overrides", "message"),
    [
        (["{tmp}/missing"], {}, "does not exist"),
        (["{tmp}"], {}, "holds no .tar"),
        (["{corpus}"], {}, "holds no .tar (its cosmo/ has some)"),
        (["a=heavy:{corpus}/mmc4"], {}, "is not a number"),
        (["{corpus}/mmc4"], {"run.stepz": 3}, "run.stepz: Extra inputs are not permitted"),
        (["{corpus}/mmc4"], {"language.unimodal_depth": 0}, "language.unimodal_depth"),
    ],
)
def test_bad_input_is_one_clear_error(corpus, tmp_path, shards, overrides, message):
    shards = [s.format(tmp=tmp_path, corpus=corpus) for s in shards]
    with pytest.raises(TrainError) as error:
        run_cli(shards, tmp_path / "run", TINY, None, 1, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_configs_load_and_the_cosmo_recipe_has_the_papers_numbers():
    cosmo = load_train_config(TINY.with_name("train-cosmo.yaml"))
    assert (cosmo.vision.model, cosmo.vision.pretrained, cosmo.language.model) == (
        "ViT-L-14",
        "openai",
        "facebook/opt-iml-max-1.3b",
    )
    assert (cosmo.language.unimodal_depth, cosmo.language.interval_layer) == (12, 2)
    assert (cosmo.data.micro_batch, cosmo.data.max_tokens, cosmo.optim.lr, cosmo.optim.warmup_steps) == (
        96,
        128,
        5e-4,
        500,
    )
    head = cosmo.head
    assert (head.contrastive_weight, head.contrastive_temperature, head.latent_dim) == (1.0, 0.2, 512)
    assert cosmo.run.checkpoint_every == 3000


def test_unreadable_and_malformed_configs(tmp_path):
    with pytest.raises(TrainError, match="cannot read config"):
        load_train_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("run: [steps\n", encoding="utf-8")
    with pytest.raises(TrainError, match="not valid YAML"):
        load_train_config(tmp_path / "bad.yaml")
