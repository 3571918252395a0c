import pytest

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.schemas.config import BuildConfig, ConfigError, load_config


def test_yaml_maps_onto_config_and_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\nasr:\n  model: large-v3\nscenes:\n  max_clip_s: 12\n")
    config = load_config(path, {"asr.model": "small", "output.videos_per_shard": 5, "ray_address": None})
    assert config.seed == 7
    assert config.asr.model == "small"
    assert config.scenes.max_clip_s == 12
    assert config.output.videos_per_shard == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("asr:\n  modle: small\n", "asr.modle"),
        ("scenes:\n  min_clip_s: -1\n", "scenes.min_clip_s"),
        ("- just\n- a list\n", "mapping"),
        ("asr: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_tiny_config_loads():
    config = load_config(TINY_CONFIG)
    assert isinstance(config, BuildConfig)
