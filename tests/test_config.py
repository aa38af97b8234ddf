"""Config loading, overrides and validation."""
import pytest

from msad_tf.config import ConfigError, load_config


def test_demo_config_loads_with_overrides():
    config = load_config("configs/demo.yaml", ["train.epochs=4", "model.k=4", "data.jitter=[0.9, 1.0]"])
    assert config.train.epochs == 6 and config.model.k == 4  # single-scale: 1.5x (train.epochs_scale)
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


def test_epochs_scale_gives_each_mode_its_budget_once(tmp_path):
    """{mode: factor} scales epochs and the LR decay epochs of that mode only, at load; the
    loaded config holds the scaled epochs and no scale, so that saving and loading it again (a
    run's config.yaml) trains the same steps."""
    path = tmp_path / "budget.yaml"
    path.write_text("train:\n  epochs: 10\n  lr_decay_epochs: [7, 9]\n"
                    "  epochs_scale: {single: 1.5, student: 0.5}\n")
    for mode, epochs, decay in (("single", 15, [10.5, 13.5]), ("student", 5, [3.5, 4.5]), ("teacher", 10, [7, 9])):
        config = load_config(path, [f"train.mode={mode}"])
        assert (config.train.epochs, config.train.lr_decay_epochs, config.train.epochs_scale) == (epochs, decay, {})
        config.save(tmp_path / f"{mode}.yaml")
        again = load_config(tmp_path / f"{mode}.yaml")
        assert (again.train.epochs, again.train.lr_decay_epochs) == (epochs, decay)
    twice = load_config(path, ["train.mode=single", "train.epochs=20", "train.lr_decay_epochs=[14, 18]"])
    assert (twice.train.epochs, twice.train.lr_decay_epochs) == (30, [21, 27])
    assert load_config(path, ["train.mode=single", "train.epochs=1"]).train.epochs == 2
    assert load_config(path, ["train.mode=student", "train.epochs=1"]).train.epochs == 1


@pytest.mark.parametrize("scale,message", [
    ("{fancy: 2}", "unknown mode 'fancy'"), ("{single: 0}", "positive"), ("{single: -1}", "positive"),
    ("{single: true}", "positive"), ("[1, 2]", "mapping"),
])
def test_bad_epochs_scale_fails_early(scale, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/demo.yaml", [f"train.epochs_scale={scale}"])
