"""Bad input fails early with one clear TrainError; shard layouts are recognised from their members."""

from __future__ import annotations

import io
import shutil
import tarfile

import pytest
from conftest import TINY

from cosmo_data.train import TrainError, run_cli
from cosmo_data.train.config import SourceConfig, load_train_config
from cosmo_data.train.shards import detect_layout, parse_source, resolve_source, resolve_sources


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


def _empty_tar() -> bytes:
    buffer = io.BytesIO()
    tarfile.open(fileobj=buffer, mode="w").close()
    return buffer.getvalue()


def test_only_finished_shards_are_trained_on_and_an_empty_first_one_is_passed_over(corpus, tmp_path):
    """A build's folder as a kill or a running build leaves it: an empty first group (no ok video), a
    writer's half-written .tmp- tar (sorted first), a tar of a group without its done marker."""
    shards = tmp_path / "out" / "shards" / "cosmo"
    shards.mkdir(parents=True)
    real = (corpus / "cosmo" / "000000.tar").read_bytes()
    (shards / "000000.tar").write_bytes(_empty_tar())
    (shards / "000001.tar").write_bytes(real)
    (shards / ".tmp-000002.tar").write_bytes(real[: len(real) // 2])
    (shards / "000003.tar").write_bytes(real)  # no marker: its group is to be rebuilt
    (shards / "notes.tar").write_bytes(real)
    markers = tmp_path / "out" / "_state" / "groups"
    markers.mkdir(parents=True)
    for group in ("000000", "000001"):
        (markers / f"{group}.json").write_text("{}")
    source = resolve_source(SourceConfig(name="video", folder=shards))
    assert source.layout == "cosmo"
    assert [tar.rsplit("/", 1)[-1] for tar in source.tars] == ["000000.tar", "000001.tar"]
    # A folder copied away from its build has no markers: every writer-named tar counts.
    alone = tmp_path / "alone"
    shutil.copytree(shards, alone)
    source = resolve_source(SourceConfig(name="video", folder=alone))
    assert [tar.rsplit("/", 1)[-1] for tar in source.tars] == ["000000.tar", "000001.tar", "000003.tar"]
    for tar in alone.iterdir():
        if tar.name != "000000.tar":
            tar.unlink()
    with pytest.raises(TrainError, match="its 1 shards hold no sample"):
        resolve_source(SourceConfig(name="video", folder=alone))


@pytest.mark.parametrize(
    ("shards", "overrides", "message"),
    [
        (["{tmp}/missing"], {}, "does not exist"),
        (["{tmp}"], {}, "holds no .tar of a finished group"),
        (["{corpus}"], {}, "holds no .tar of a finished group (NNNNNN.tar) (its cosmo/ has some)"),
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
