"""Backbone pre-training (``msad pretrain``) and loading its weights into detectors."""
import json

import numpy as np
import pytest

from conftest import h5_arrays, tiny_train_config
from msad_tf.config import ConfigError, ModelConfig
from msad_tf.data.preprocess import resolve_input_norm
from msad_tf.data.synthetic import CLASS_NAMES, render_object_image
from msad_tf.modeling.backbone import (
    WEIGHTS_DIR, build_resnet, resolve_backbone_weights, save_backbone_weights,
)


def test_object_images_are_deterministic_and_hold_one_object():
    a, kind_a = render_object_image(np.random.default_rng([5, 1]), 64, 0.75)
    b, kind_b = render_object_image(np.random.default_rng([5, 1]), 64, 0.75)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert kind_a == kind_b and 0 <= kind_a < len(CLASS_NAMES)
    np.testing.assert_array_equal(a, b)
    kinds = {render_object_image(np.random.default_rng([5, i]), 32, 0.75)[1] for i in range(60)}
    assert kinds == set(range(len(CLASS_NAMES)))


def test_backbone_loads_a_weights_file_and_rejects_another_width(tmp_path):
    source = build_resnet("resnet_tiny", 0.25, "bn")
    path = tmp_path / "tiny.weights.h5"
    save_backbone_weights(source, path)
    loaded = build_resnet("resnet_tiny", 0.25, "bn", weights=str(path))
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="made for resnet_tiny_w0.25.*do not fit resnet_tiny_w0.5"):
        build_resnet("resnet_tiny", 0.5, "bn", weights=str(path))


def test_unknown_weights_name_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="msad pretrain"):
        resolve_backbone_weights("no_such_weights")
    with pytest.raises(ValueError, match="msad pretrain"):
        build_resnet("resnet_tiny", 0.5, "bn", weights="imagenet")


def test_pretrained_files_keep_imagenet_std_inputs():
    assert resolve_input_norm(ModelConfig(backbone_weights="some.weights.h5")) == "imagenet_std"
    assert resolve_input_norm(ModelConfig(backbone_weights="imagenet")) == "caffe"


def test_shipped_weights_fit_the_reproduction_backbone():
    shipped = sorted(WEIGHTS_DIR.glob("*.weights.h5"))
    assert shipped, "no shipped backbone weights"
    for path in shipped:
        record = json.loads(path.with_name(path.name[: -len(".weights.h5")] + ".json").read_text())
        model = build_resnet(record["backbone"], record["width"], record["norm"], weights=path.stem[:-len(".weights")])
        assert len(model.get_weights()) == len(h5_arrays(path))
        assert record["val_top1"]["high"] > 2.0 / len(CLASS_NAMES)


def test_pretrain_writes_weights_and_record(tmp_path):
    from msad_tf.training.pretrain import pretrain_backbone

    out = tmp_path / "tiny.weights.h5"
    record = pretrain_backbone(str(out), width=0.25, images=64, val_images=16, image_size=32,
                               steps=10, batch_size=8, progress=False)
    assert json.loads((tmp_path / "tiny.json").read_text()) == record
    assert record["steps"] == 10 and set(record["val_top1"]) == {"high", "low"}
    assert all(0.0 <= value <= 1.0 for value in record["val_top1"].values())
    fresh = build_resnet("resnet_tiny", 0.25, "bn")
    loaded = build_resnet("resnet_tiny", 0.25, "bn", weights=str(out))
    assert any(np.abs(a - b).max() > 0 for a, b in zip(fresh.get_weights(), loaded.get_weights()))
    with pytest.raises(ValueError, match=".weights.h5"):
        pretrain_backbone(str(tmp_path / "bad.h5"))


def test_a_run_reloads_without_its_init_weights_file_and_is_reused_only_with_its_config(tmp_path, tiny_data):
    from msad_tf.training import runs
    from msad_tf.training.train import train

    init = tmp_path / "init.weights.h5"
    save_backbone_weights(build_resnet("resnet_tiny", 0.25, "bn"), init)
    config = tiny_train_config(tiny_data, model=dict(backbone_weights=str(init)), epochs=1, steps_per_epoch=1)
    train(config, tmp_path / "run", progress=False)
    assert runs.is_finished(tmp_path / "run", config)
    assert not runs.is_finished(tmp_path / "elsewhere", config)
    changed = tiny_train_config(tiny_data, model=dict(backbone_weights=str(init)), epochs=1, steps_per_epoch=1,
                                base_lr=0.5)
    with pytest.raises(ConfigError, match=r"another config \(train.base_lr: 0.01 -> 0.5\); retrain"):
        runs.is_finished(tmp_path / "run", changed)
    init.unlink()
    loaded, model, _, _ = runs.load_run(tmp_path / "run")
    assert loaded.model.backbone_weights is None
    assert loaded.model.input_norm == "imagenet_std"
    assert len(model.get_weights()) > 0
