"""Backbone pre-training on image-level labels: this project's stand-in for ImageNet.

The paper's detectors all start from an ImageNet-pretrained ResNet; no model here can download
weights, and the tiny backbones have none. ``msad pretrain`` trains a backbone once to classify
single-object images (ImageNet's object-centric images in miniature: one shape of the dataset's
classes and size distribution on the dataset's background, softmax cross-entropy), rendered by
the dataset generator from a seed stream disjoint from the detection dataset's
(``PRETRAIN_SEED_OFFSET``), with the class label only: no box is ever seen. Each batch is shown
at full size or, with probability 1/2, as its stride-2 subsample, so neither resolution is
favoured. The backbone's weights go to a ``.weights.h5`` file that ``model.backbone_weights``
loads (``msad_tf/weights/`` holds the shipped ones), with a JSON record of how they were made.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from msad_tf.data.preprocess import normalize_image
from msad_tf.data.synthetic import CLASS_NAMES, render_object_image
from msad_tf.modeling.backbone import build_resnet, save_backbone_weights

PRETRAIN_SEED_OFFSET = 1_000_003


def render_classification_set(count: int, size: int, object_scale: float, seed: int,
                              progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``count`` single-object images and their classes.

    Returns:
      (uint8 [count, size, size, 3], int32 [count] class indices).
    """
    from tqdm import tqdm

    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.zeros((count,), np.int32)
    for i in tqdm(range(count), desc="render", disable=not progress, leave=False):
        rng = np.random.default_rng([PRETRAIN_SEED_OFFSET + seed, i])
        images[i], labels[i] = render_object_image(rng, size, object_scale)
    return images, labels


class BackboneClassifier(keras.Model):
    """Backbone + global average pools of C3, C4, C5 concatenated + one dense layer.

    images float32 [B, H, W, 3] (normalised) -> logits [B, num_classes]. Pooling three stages
    gives the stride-8 and stride-16 features a direct signal, as the detector's FPN reads them.
    """

    def __init__(self, backbone: keras.Model, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        pooled = [self.pool(feature) for feature in features[2:]]
        return self.classifier(keras.ops.concatenate(pooled, axis=-1))


def _dataset(images, labels, batch_size, input_norm, k, train, seed):
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if train:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=train)

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if train:
            image = tf.where(tf.random.uniform([tf.shape(image)[0], 1, 1, 1]) < 0.5,
                             image, tf.reverse(image, axis=[2]))
            low = tf.random.uniform([]) < 0.5
            image = tf.cond(low, lambda: image[:, ::k, ::k], lambda: image)
        return normalize_image(image, input_norm), label

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose highest logit is their class."""
    return float(np.mean(np.argmax(logits, -1) == labels))


def pretrain_backbone(out: str, *, backbone: str = "resnet_tiny", width: float = 0.5,
                      norm: str = "bn", images: int = 20000, val_images: int = 2000,
                      image_size: int = 64, object_scale: float = 0.75, k: int = 2,
                      steps: int = 6000, batch_size: int = 64, lr: float = 2e-3,
                      weight_decay: float = 0.05, seed: int = 0, progress: bool = True) -> dict:
    """Train ``backbone`` to classify single-object images; write ``out`` (.weights.h5) and
    ``out`` with .json (how the weights were made).

    Returns that record: settings, seconds, and top-1 accuracy on held-out images at full size
    and at the stride-k subsample.
    """
    if not str(out).endswith(".weights.h5"):
        raise ValueError(f"--out must end with .weights.h5, got '{out}'")
    keras.utils.set_random_seed(seed)
    input_norm = "imagenet_std"
    train_x, train_y = render_classification_set(images, image_size, object_scale, seed, progress)
    val_x, val_y = render_classification_set(val_images, image_size, object_scale, seed + 1, progress)
    net = build_resnet(backbone, width, norm)
    model = BackboneClassifier(net, len(CLASS_NAMES))
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        lr * 0.01, steps - warmup, warmup_target=lr, warmup_steps=warmup
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    epochs = 10
    start = time.time()
    model.fit(_dataset(train_x, train_y, batch_size, input_norm, k, True, seed),
              epochs=epochs, steps_per_epoch=math.ceil(steps / epochs), shuffle=False,
              verbose=1 if progress else 2)
    seconds = time.time() - start
    accuracy = {}
    for name, stride in (("high", 1), ("low", k)):
        logits = model.predict(
            _dataset(val_x[:, ::stride, ::stride], val_y, 64, input_norm, k, False, seed), verbose=0
        )
        accuracy[name] = top1_accuracy(logits, val_y)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_backbone_weights(net, out)
    record = {
        "backbone": backbone, "width": width, "norm": norm, "input_norm": input_norm,
        "images": images, "image_size": image_size, "object_scale": object_scale, "k": k,
        "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "seed": seed, "seed_stream": PRETRAIN_SEED_OFFSET + seed, "seconds": round(seconds, 1),
        "val_top1": accuracy,
    }
    Path(str(out)[: -len(".weights.h5")] + ".json").write_text(json.dumps(record, indent=2) + "\n")
    return record
