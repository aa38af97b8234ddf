"""Config loading, overrides and validation."""
import pytest

from msad_tf.config import ConfigError, load_config


def test_demo_config_loads_with_overrides():
    config = load_config("configs/demo.yaml", ["train.epochs=3", "model.k=4", "data.jitter=[0.9, 1.0]"])
    assert config.train.epochs == 3 and config.model.k == 4
    assert config.data.jitter == [0.9, 1.0]
    assert config.low_resolution() == (32, 32)


@pytest.mark.parametrize("override,message", [
    (["train.epoch=3"], "unknown key 'epoch'"),
    (["nosuch.key=1"], "unknown section"),
    (["model.k=8"], "below P1"),
    (["model.k=8"], "would have 4 of the 5 pyramid levels the head needs .* use k <= 4"),
    (["model.k=32", "model.head_levels=[5, 6, 7]", "model.size_ranges=[[0, 1], [1, 2], [2, 3]]"],
     "would have 2 of the 3 pyramid levels .* use k <= 16"),
    (["model.head_levels=[]"], "head_levels is empty"),
    (["model.k=3"], "power of two"),
    (["train.mode=fancy"], "train.mode"),
    (["model.size_ranges=[[0, 1]]"], "size_ranges"),
    (["epochs"], "section.key=value"),
])
def test_bad_configs_fail_early(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/demo.yaml", override)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
