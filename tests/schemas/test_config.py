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


def test_clip_score_has_no_switch():
    """Assignment places frames by their CLIP scores, so the stage always runs: there is no option to
    turn it off (it could only ever be true)."""
    from pydantic import ValidationError

    from cosmo_data.schemas.config import ClipScoreConfig

    assert "enabled" not in ClipScoreConfig.model_fields
    for value in (False, True):
        with pytest.raises(ValidationError, match="clip_score.enabled"):
            BuildConfig.model_validate({"clip_score": {"enabled": value}})


def test_yaml_words_stay_strings_where_a_string_is_meant(tmp_path):
    """YAML 1.1 reads no/yes/on/off as booleans: `language: no` (Whisper's code for Norwegian) failed.
    Only true/false are booleans; a boolean option still takes the words through pydantic."""
    path = tmp_path / "c.yaml"
    path.write_text("asr:\n  language: no\n  enabled: off\ncaption:\n  prompt: yes\n  enabled: true\n")
    config = load_config(path)
    assert config.asr.language == "no" and config.asr.enabled is False
    assert config.caption.prompt == "yes" and config.caption.enabled is True


def test_a_null_override_resets_a_value_the_file_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("asr:\n  language: en\n")
    assert load_config(path, {"asr.language": None}).asr.language is None
