"""Test set-up: two logical CPU devices (for MirroredStrategy tests) and tiny model configs."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

from msad_tf.config import ModelConfig  # noqa: E402

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
