"""``model.input_norm``: caffe preprocessing for keras.applications ImageNet weights, applied
alike by the input pipeline and the exported modules."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_config
from msad_tf.config import ConfigError, ModelConfig, config_from_dict
from msad_tf.data import CocoDataset, build_dataset
from msad_tf.data.preprocess import normalize_image, pad_to_multiple, resolve_input_norm
from msad_tf.data.synthetic import CATEGORY_IDS
from msad_tf.modeling.backbone import build_resnet, copy_weights_by_name


def test_auto_is_caffe_with_backbone_weights():
    assert resolve_input_norm(ModelConfig(backbone_weights="imagenet")) == "caffe"
    assert resolve_input_norm(ModelConfig()) == "imagenet_std"
    assert resolve_input_norm(ModelConfig(backbone_weights="imagenet", input_norm="imagenet_std")) == "imagenet_std"
    assert resolve_input_norm(ModelConfig(input_norm="caffe")) == "caffe"
    with pytest.raises(ConfigError, match="model.input_norm 'torch'"):
        config_from_dict({"model": {"input_norm": "torch"}})


def test_caffe_normalisation_is_keras_preprocess_input():
    image = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    expected = keras.applications.resnet.preprocess_input(image.astype(np.float32))
    np.testing.assert_allclose(normalize_image(image, "caffe").numpy(), expected, atol=1e-5)


def test_our_resnet50_on_caffe_input_is_keras_applications_on_preprocess_input():
    """Random keras.applications weights copied by layer name (as ``load_application_weights``
    copies the ImageNet ones); inference mode; same uint8 image."""
    app = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in app.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0.0, 0.1, layer.moving_mean.shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype(np.float32))
    ours = build_resnet("resnet50", 1.0, norm="frozen_bn")
    copied = copy_weights_by_name(app, ours)
    assert copied == len([layer for layer in app.layers if layer.weights]) == 106

    image = rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    expected = app(keras.applications.resnet.preprocess_input(image.astype(np.float32)), training=False).numpy()
    c5 = ours(normalize_image(image, "caffe"), training=False)[-1].numpy()
    assert c5.shape == expected.shape == (1, 3, 3, 2048)
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(c5 - expected).max()) <= 1e-4 * scale
    other = ours(normalize_image(image, "imagenet_std"), training=False)[-1].numpy()
    assert float(np.abs(other - expected).max()) > 1e-2 * scale


@pytest.fixture(scope="module")
def caffe_setup(tiny_data):
    import msad_tf.training.runs as runs

    config = config_from_dict({
        "model": dataclasses.asdict(tiny_model_config(norm="bn", input_norm="caffe")),
        "data": dict(root=str(tiny_data), short_side=64, max_side=64, pad_multiple=128),
    })
    keras.utils.set_random_seed(0)
    model = runs.build_model(config, len(CATEGORY_IDS))
    head = model.head
    head.cls_logits.bias.assign(np.full(head.cls_logits.bias.shape, -2.0, np.float32))
    dataset = CocoDataset(config.data.ann_file("val"), config.data.image_dir("val"))
    return config, model, dataset


def _pipeline_batch(config, dataset):
    batch = next(iter(build_dataset(
        dataset, short_side=64, max_side=64, batch_size=2, pad_multiple=128,
        input_norm=resolve_input_norm(config.model),
    )))
    return batch


def test_pipeline_and_saved_model_normalise_alike(caffe_setup):
    from msad_tf.export.saved_model import DetectionModule, export_spec
    from msad_tf.export.tflite import TFLiteDetectionModule

    config, model, dataset = caffe_setup
    spec = export_spec(model, config, "high", pad_multiple=128)
    assert spec.input_norm == "caffe"
    batch = _pipeline_batch(config, dataset)
    images = np.stack([
        tf.io.decode_image(tf.io.read_file(r.path), channels=3).numpy() for r in dataset.records[:2]
    ])
    assert images.shape == (2, 64, 64, 3)
    pixels = images.astype(np.float32)[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(batch["images"].numpy()[:, :64, :64], pixels, atol=1e-3)

    module = DetectionModule(model, spec, CATEGORY_IDS)
    canvas, size = module._prepare(tf.constant(images[0]))
    assert size.numpy().tolist() == [64, 64]
    np.testing.assert_allclose(canvas.numpy()[:64, :64], batch["images"].numpy()[0, :64, :64], atol=1e-3)

    served = module.serving_default(tf.constant(images))
    keras_out = model.detect(batch["images"], batch["image_sizes"], 0)
    np.testing.assert_array_equal(served["num_detections"].numpy(), keras_out["num_detections"].numpy())
    assert served["num_detections"].numpy().min() > 0
    np.testing.assert_allclose(served["detection_scores"].numpy(), keras_out["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(served["detection_boxes"].numpy() * 64.0, keras_out["boxes"].numpy(), atol=1e-3)

    lite = TFLiteDetectionModule(model, spec, CATEGORY_IDS)
    normalized, _ = lite.normalized_input(
        tf.constant(np.pad(images[:1], [[0, 0], [0, 64], [0, 64], [0, 0]])), tf.constant([64, 64])
    )
    np.testing.assert_allclose(normalized.numpy(), pad_to_multiple(batch["images"][:1], 128).numpy(), atol=1e-3)


def test_training_pipeline_normalises_like_the_export(caffe_setup):
    from msad_tf.training.train import make_train_dataset

    config, _, dataset = caffe_setup
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, jitter=[1.0, 1.0], flip=False)
    )
    batch = next(iter(make_train_dataset(config, dataset, 1)))
    got = batch["images"].numpy()[0, :64, :64]
    candidates = [
        normalize_image(tf.io.decode_image(tf.io.read_file(r.path), channels=3), "caffe").numpy()
        for r in dataset.records
    ]
    assert any(np.allclose(got, c, atol=1e-3) for c in candidates)
