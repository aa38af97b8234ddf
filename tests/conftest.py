"""Test set-up: two logical CPU devices (for MirroredStrategy tests), tiny model configs, a tiny
dataset, and helpers shared by the distribution and training tests."""
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from msad_tf.cpu_threads import configure_threads  # noqa: E402

configure_threads()
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402

from msad_tf.config import ModelConfig  # noqa: E402
from msad_tf.training.launch import h5_arrays  # noqa: E402,F401

TINY_RANGES = [[0, 20], [20, 40], [40, 80], [80, 160], [160, 1e8]]


def tiny_model_config(**overrides) -> ModelConfig:
    """A ResNet-tiny (width 0.25) FCOS with 16-channel FPN and 1-conv towers."""
    values = dict(
        backbone="resnet_tiny",
        width=0.25,
        norm="sync_bn",
        fpn_channels=16,
        head_convs=1,
        gn_groups=4,
        size_ranges=TINY_RANGES,
    )
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def tiny_config():
    return tiny_model_config()


def toy_batch(batch=4, size=128, seed=0):
    """Images [B, size, size, 3] and two boxes per image (one padded slot)."""
    rng = tf.random.Generator.from_seed(seed)
    images = rng.normal([batch, size, size, 3])
    boxes = tf.constant(
        [[[8, 10, 40, 36], [30, 50, 110, 120], [0, 0, 0, 0]]] * batch, tf.float32
    )
    classes = tf.constant([[0, 2, -1]] * batch, tf.int32)
    return {"images": images, "boxes": boxes, "classes": classes}


# ------------------------------------------------------------- distribution and training helpers
def one_step(strategy, build, weights, batch, optimizer=lambda: keras.optimizers.SGD(0.1, momentum=0.9)):
    """One ``fit`` step of ``build()`` (set to ``weights``) under ``strategy``.

    Returns (history dict, trainable weights as numpy arrays after the step).
    """
    with strategy.scope():
        model = build()
        model.set_weights(weights)
        model.compile(optimizer=optimizer())
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False)
    return history.history, [w.numpy() for w in model.trainable_weights]


def assert_two_replicas_match_one(build, batch, seed=1):
    """A step on 2 logical CPUs (MirroredStrategy) equals the 1-device step: logs and weights
    to rtol 1e-4, and every trainable weight moved. Returns the 1-device logs."""
    from msad_tf.training.strategy import mirrored_strategy

    assert len(tf.config.list_logical_devices("CPU")) >= 2
    keras.utils.set_random_seed(seed)
    reference = build()
    weights = reference.get_weights()
    initial = [w.numpy() for w in reference.trainable_weights]
    two = mirrored_strategy(["/cpu:0", "/cpu:1"])
    assert two.num_replicas_in_sync == 2
    logs1, w1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), build, weights, batch)
    logs2, w2 = one_step(two, build, weights, batch)
    assert set(logs1) == set(logs2)
    for key in logs1:
        np.testing.assert_allclose(logs2[key], logs1[key], rtol=1e-4, err_msg=key)
    assert len(w1) == len(initial)
    assert all(float(np.abs(a - b).max()) > 0 for a, b in zip(w1, initial))
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    return logs1


TINY_DATA_MODEL = dict(
    backbone="resnet_tiny", width=0.25, norm="bn", fpn_channels=16, head_convs=1, gn_groups=4,
    size_ranges=[[0, 8], [8, 16], [16, 32], [32, 64], [64, 100000]],
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Synthetic COCO folder: 12 train and 2 val images of 64x64 px."""
    from msad_tf.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    make_synthetic_dataset(root, num_train=12, num_val=2, image_size=64, seed=0, progress=False)
    return root


def tiny_train_config(data_root, model=None, **train):
    """Config of a tiny float32 run on ``tiny_data`` (64 px, padded to 128): batch 2, 2 epochs
    of 3 steps, backups every 2 steps; ``train`` and ``model`` entries override."""
    from msad_tf.config import config_from_dict

    values = dict(mode="single", batch_size=2, base_batch=2, base_lr=0.01, epochs=2, steps_per_epoch=3,
                  warmup_steps=2, backup_every=2, seed=0, precision="float32")
    values.update(train)
    return config_from_dict({
        "model": dict(TINY_DATA_MODEL, **(model or {})),
        "data": dict(root=str(data_root), short_side=64, max_side=64, pad_multiple=128, max_boxes=8),
        "train": values,
    })


def write_tiny_yaml(path, epochs=2, steps_per_epoch=2, lr_decay_epochs=(1.5,)):
    """A YAML config of tiny float32 runs on ``tiny_data`` (batch 2, 64 px padded to 128, no
    backups) for the commands that take a config file (demo, reproduce). Returns ``path``."""
    import yaml

    config = {
        "model": TINY_DATA_MODEL,
        "data": {"short_side": 64, "max_side": 64, "pad_multiple": 128, "max_boxes": 8},
        "train": {"batch_size": 2, "base_batch": 2, "base_lr": 0.01, "epochs": epochs,
                  "steps_per_epoch": steps_per_epoch, "lr_decay_epochs": list(lr_decay_epochs), "backup_every": 0,
                  "precision": "float32"},
        "eval": {"batch_size": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def max_weight_difference(path_a, path_b, keep=lambda name: True) -> float:
    """Largest absolute difference between two weights files of the same model, over the
    arrays whose name ``keep`` accepts."""
    a, b = h5_arrays(path_a), h5_arrays(path_b)
    assert a.keys() == b.keys()
    assert a, f"{path_a} holds no arrays"
    kept = [k for k in a if keep(k)]
    assert kept, f"no array of {path_a} is kept"
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]), initial=0.0)) for k in kept)


STUDENT_RUN_MODEL = dict(norm="bn", size_ranges=[[0, 8], [8, 16], [16, 32], [32, 64], [64, 1e8]])
"""``tiny_model_config`` overrides of ``student_run_config``'s default model."""


def student_run_config(root, model_config=None, **eval_values):
    """Config of a student run on the synthetic dataset ROOT/data, for the export and evaluation
    parity tests: images resized to 128 px and padded to 128, eval batch 4 and ``eval_values``.
    ``model_config`` defaults to the tiny FCOS with ``STUDENT_RUN_MODEL``."""
    from msad_tf.config import config_from_dict

    model_config = model_config or tiny_model_config(**STUDENT_RUN_MODEL)
    return config_from_dict(
        {
            "model": dataclasses.asdict(model_config),
            "data": {"root": str(root / "data"), "short_side": 128, "max_side": 128, "pad_multiple": 128},
            "train": {"mode": "student"},
            "eval": {"batch_size": 4, **eval_values},
        }
    )


def write_confident_run(root, config, category_ids, class_names, cls_bias=-4.5, box_bias=1.5):
    """ROOT/student: a run directory of ``config`` with random weights whose head scores a few
    boxes per image above the default threshold (for export and evaluation parity tests): the
    classification kernel drawn from N(0, 0.1) (numpy seed 0), every classification bias
    ``cls_bias`` and, unless ``box_bias`` is None, every box regression bias ``box_bias``."""
    from msad_tf.training import runs

    run = root / "student"
    run.mkdir()
    config.save(run / runs.CONFIG_FILE)
    runs.write_categories(run, category_ids, class_names)
    keras.utils.set_random_seed(0)
    model = runs.build_model(config, len(category_ids))
    rng = np.random.default_rng(0)
    head = model.head
    head.cls_logits.kernel.assign(rng.normal(0.0, 0.1, head.cls_logits.kernel.shape).astype(np.float32))
    head.cls_logits.bias.assign(np.full(head.cls_logits.bias.shape, cls_bias, np.float32))
    if box_bias is not None:
        head.box_pred.bias.assign(np.full(head.box_pred.bias.shape, box_bias, np.float32))
    model.save_weights(str(run / runs.WEIGHTS_FILE))
    return run


# ------------------------------------------------------------------- evaluation and export parity
def evaluate_capturing(monkeypatch, model, dataset, config, resolution="low"):
    """(metrics, COCO results) of ``evaluator.evaluate_model``."""
    from msad_tf.evaluation import evaluator

    captured = {}
    original = evaluator.evaluate_coco

    def capture(coco, results, image_ids, **kwargs):
        captured["results"] = results
        return original(coco, results, image_ids, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate_coco", capture)
    metrics = evaluator.evaluate_model(model, dataset, config, resolution, progress=False)
    return metrics, captured["results"]


def assert_same_results(a, b, box_atol=0.02, score_atol=1e-4):
    """Same COCO detections per image (category, score, box to the tolerances), in any order:
    equal scores may come out of NMS in either order."""
    assert sorted({r["image_id"] for r in a}) == sorted({r["image_id"] for r in b})
    assert len(a) == len(b)
    unused = list(b)
    for r in a:
        match = next(
            (
                i for i, o in enumerate(unused)
                if o["image_id"] == r["image_id"] and o["category_id"] == r["category_id"]
                and abs(o["score"] - r["score"]) <= score_atol
                and np.abs(np.subtract(o["bbox"], r["bbox"])).max() <= box_atol
            ),
            None,
        )
        assert match is not None, f"no match for {r}"
        unused.pop(match)


def _as_results(boxes, scores, classes):
    return [{"image_id": 0, "category_id": int(c), "bbox": b.tolist(), "score": float(s)}
            for b, s, c in zip(boxes, scores, classes)]


def assert_tflite_detects_as_keras(path, model, spec, record, category_ids, pad=128, k=2, shift=1):
    """The TFLite export at ``path`` (one thread) finds on ``record``'s image the detections of
    the Keras ``model`` on the same input canvas (``prepare_input``) normalised, zero padded to
    ``pad``, subsampled by ``k`` and read at ``shift`` (boxes to 1e-3 px of the original image,
    scores to 1e-5), at least one. Returns the canvas and its resized (h, w)."""
    from msad_tf.data.preprocess import network_input, normalize_image, pad_to_multiple
    from msad_tf.export.tflite import TFLiteDetector, prepare_input

    detector = TFLiteDetector(path, num_threads=1)
    image = tf.io.decode_image(tf.io.read_file(record.path), channels=3, expand_animations=False)
    canvas, size, scale = prepare_input(image, spec, detector.input_size)
    low, low_size = network_input(pad_to_multiple(normalize_image(canvas), pad), size[None], k)
    keras_out = model.detect(low, low_size, shift)
    n = int(keras_out["num_detections"][0])
    boxes, scores, classes = detector.detect_image(image)
    assert n > 0 and len(scores) == n
    assert_same_results(
        _as_results(boxes, scores, classes),
        _as_results(keras_out["boxes"][0, :n].numpy() * k / scale, keras_out["scores"][0, :n].numpy(),
                    np.array(category_ids)[keras_out["classes"][0, :n].numpy()]),
        box_atol=1e-3, score_atol=1e-5,
    )
    return canvas, size
