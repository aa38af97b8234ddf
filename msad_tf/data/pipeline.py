"""tf.data input pipeline: COCO folder or TFRecord shards -> padded, normalized batches.

Per image: decode to 3 channels -> resize so the short side is alpha * short_side (long side at
most alpha * max_side; alpha ~ U[jitter] per image when training, 1 otherwise) -> scale boxes
by the same factor -> clip boxes to the resized image, drop empty ones -> random horizontal
flip -> normalize (``input_norm``) -> keep the first ``max_boxes`` boxes. Then padded_batch and
zero padding of the batch up to a multiple of ``pad_multiple``.

Randomness is stateless: element i of the (shuffled, repeated) stream uses the seed
(seed, i), so a given seed gives the same batches whatever the parallelism (with several
input pipelines, i counts across them so no two pipelines draw the same jitter).

TFRecord shards (the large-dataset path): the sorted file list is shuffled with the seed when
training, read by an ordered parallel interleave (``min(files, 16)`` files open, one record
from each in turn, ``num_parallel_calls`` readers), then shuffled in a seeded buffer of
``shuffle_buffer`` records. Every record is read exactly once per epoch, and the order depends
only on the seed (not on the parallelism); each epoch of a repeated stream is reshuffled.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from msad_tf.data.coco import CocoDataset, DatasetError
from msad_tf.data.preprocess import normalize_image, pad_to_multiple, resize_image
from msad_tf.data.tfrecords import parse_example

MAX_INTERLEAVE_CYCLE = 16


def records_dataset(dataset: CocoDataset) -> tf.data.Dataset:
    """One element per record: dict(path string, image_id int64, boxes float32 [N, 4],
    classes int32 [N]) with boxes in original pixels."""
    records = dataset.records
    lengths = np.array([len(r.classes) for r in records], np.int64)
    boxes = np.concatenate([r.boxes.reshape(-1, 4) for r in records]).astype(np.float32)
    classes = np.concatenate([r.classes.reshape(-1) for r in records]).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(
        {
            "path": tf.constant([r.path for r in records]),
            "image_id": tf.constant([r.image_id for r in records], tf.int64),
            "boxes": tf.RaggedTensor.from_row_lengths(boxes, lengths),
            "classes": tf.RaggedTensor.from_row_lengths(classes, lengths),
        }
    )


#: ``cache_images="auto"`` keeps decoded images in memory up to this many bytes.
CACHE_AUTO_BYTES = 2 * 1024**3


def decoded_bytes(dataset: CocoDataset) -> int:
    """Bytes of every image of ``dataset`` decoded to uint8 RGB."""
    return int(sum(3 * r.height * r.width for r in dataset.records))


def use_image_cache(setting, dataset) -> bool:
    """Whether to cache decoded images: ``setting`` True/False, or "auto" (a folder dataset whose
    decoded images fit in ``CACHE_AUTO_BYTES``)."""
    if setting == "auto":
        return isinstance(dataset, CocoDataset) and decoded_bytes(dataset) <= CACHE_AUTO_BYTES
    return bool(setting) and isinstance(dataset, CocoDataset)


def _decode(encoded):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def _read_and_decode(element):
    example = _read_file(element)
    return dict(example, encoded=_decode(example["encoded"]))


def _read_file(element):
    return {
        "encoded": tf.io.read_file(element["path"]),
        "image_id": element["image_id"],
        "boxes": element["boxes"],
        "classes": element["classes"],
    }


def _tfrecord_files(pattern: str) -> list[str]:
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise DatasetError(f"{pattern}: no TFRecord files match this pattern")
    return files


def prepare_image(example, index, *, short_side, max_side, training, jitter, flip, max_boxes, seed,
                  input_norm="imagenet_std", corruption=None):
    """The per-image transform of the pipeline.

    Args:
      example: dict(encoded string (or the decoded uint8 [H, W, 3] image), image_id int64,
        boxes float32 [N, 4] original pixels, classes int32 [N]).
      index: int64 scalar, position of the element in the stream (seeds its randomness).
      input_norm: ``normalize_image`` mode (``resolve_input_norm`` of the model config).
      corruption: None, or ``f(image uint8 [H, W, 3], image_id int64) -> uint8 [H, W, 3]``
        applied to the decoded original image before anything else (the evaluation hook of
        ``msad evaluate --corruption``, e.g. ``Corruption.tf_apply``).
    Returns:
      dict(images float32 [h, w, 3] normalized, boxes float32 [max_boxes, 4] resized pixels
      (zero padded), classes int32 [max_boxes] (-1 padded), image_ids int64, scales float32,
      image_sizes int32 [2] = (h, w)).
    """
    encoded = example["encoded"]
    image = encoded if encoded.dtype == tf.uint8 else _decode(encoded)
    if corruption is not None:
        image = tf.ensure_shape(corruption(image, example["image_id"]), [None, None, 3])
    u = tf.random.stateless_uniform([2], seed=tf.stack([tf.constant(seed, tf.int64), index]))
    if training:
        alpha = jitter[0] + (jitter[1] - jitter[0]) * u[0]
    else:
        alpha = tf.constant(1.0, tf.float32)
    image, scale = resize_image(image, alpha * short_side, alpha * max_side)
    size = tf.shape(image)[:2]
    limits = tf.cast(tf.concat([size, size], 0), tf.float32)
    boxes = tf.minimum(tf.maximum(example["boxes"] * scale, 0.0), limits)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = tf.boolean_mask(boxes, keep)
    classes = tf.boolean_mask(example["classes"], keep)
    if flip:
        flipped = u[1] < 0.5
        image = tf.cond(flipped, lambda: tf.reverse(image, axis=[1]), lambda: image)
        width = limits[1]
        mirrored = tf.stack(
            [boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], axis=1
        )
        boxes = tf.where(flipped, mirrored, boxes)
    boxes = boxes[:max_boxes]
    classes = classes[:max_boxes]
    pad = max_boxes - tf.shape(classes)[0]
    boxes = tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_boxes, 4])
    classes = tf.ensure_shape(tf.pad(classes, [[0, pad]], constant_values=-1), [max_boxes])
    return {
        "images": normalize_image(image, input_norm),
        "boxes": boxes,
        "classes": classes,
        "image_ids": example["image_id"],
        "scales": scale,
        "image_sizes": size,
    }


def build_dataset(
    source,
    *,
    short_side,
    max_side,
    batch_size,
    training=False,
    jitter=(1.0, 1.0),
    flip=None,
    max_boxes=100,
    pad_multiple=256,
    shuffle_buffer=512,
    seed=0,
    num_parallel_calls=tf.data.AUTOTUNE,
    drop_remainder=None,
    repeat=False,
    deterministic=None,
    input_context=None,
    input_norm="imagenet_std",
    cache_images=False,
    corruption=None,
) -> tf.data.Dataset:
    """Batches of a COCO dataset ready for the detectors.

    Args:
      source: a CocoDataset, or a glob pattern of TFRecord shards from ``write_tfrecords``.
      short_side, max_side: base resolution (Detectron2 ResizeShortestEdge semantics).
      batch_size: images per batch B.
      training: jitter the resolution, shuffle (seeded) and, by default, flip and drop the
        last partial batch.
      jitter: (alpha_min, alpha_max), resolution factor range used when training.
      flip: random horizontal flip (default: ``training``).
      max_boxes: boxes kept per image (the first ones).
      pad_multiple: Hp and Wp are multiples of this.
      shuffle_buffer: shuffle buffer of the TFRecord path (the folder path shuffles its whole
        list of file names, which costs nothing).
      seed: seed of the shuffle, the jitter and the flips.
      num_parallel_calls, deterministic: parallelism of the map/interleave; ``deterministic``
        None keeps the order (tf.data's default), so the stream depends only on ``seed``.
      drop_remainder: default ``training``.
      repeat: repeat forever (each pass reshuffled when training).
      cache_images: keep a folder dataset's decoded images in memory after the first pass (the
        stream is identical: the shuffle permutes the same list with the same seed).
      input_context: a tf.distribute.InputContext (from ``distribute_datasets_from_function``):
        this pipeline then reads only its share of the data, TFRecord files if there are at
        least as many as pipelines, records otherwise. ``batch_size`` stays per pipeline.
      input_norm: pixel normalisation, ``resolve_input_norm(config.model)`` of the model the
        batches are for (``imagenet_std`` or ``caffe``).
      corruption: evaluation only: None, or a per-image function of the decoded uint8 original
        image and its id, applied before resizing (see ``prepare_image``; robustness evaluation,
        ``msad_tf.evaluation.corruptions``). None leaves the pipeline unchanged.
    Returns:
      tf.data.Dataset of dict(
        images float32 [B, Hp, Wp, 3] normalized, zero padded bottom/right,
        boxes float32 [B, max_boxes, 4] [ymin, xmin, ymax, xmax] resized pixels, zero padded,
        classes int32 [B, max_boxes] contiguous, -1 padded,
        image_ids int64 [B],
        scales float32 [B] (resized = original * scale),
        image_sizes int32 [B, 2] resized unpadded (h, w)).
    """
    flip = training if flip is None else bool(flip)
    drop_remainder = training if drop_remainder is None else bool(drop_remainder)
    jitter = (float(jitter[0]), float(jitter[1]))
    if not 0 < jitter[0] <= jitter[1]:
        raise ValueError(f"jitter {jitter} must satisfy 0 < alpha_min <= alpha_max")
    if corruption is not None and training:
        raise ValueError("corruption is an evaluation hook: build_dataset(training=False) only")

    shards = 1 if input_context is None else input_context.num_input_pipelines
    shard_index = 0 if input_context is None else input_context.input_pipeline_id
    if isinstance(source, CocoDataset):
        ds = records_dataset(source)
        if shards > 1:
            ds = ds.shard(shards, shard_index)
        to_example = _read_file
        if cache_images:
            ds = ds.map(_read_and_decode, num_parallel_calls=num_parallel_calls).cache()
            to_example = dict
        if training:
            ds = ds.shuffle(len(source.records), seed=seed, reshuffle_each_iteration=True)
    elif isinstance(source, (str, os.PathLike)):
        pattern = os.fspath(source)
        num_files = len(_tfrecord_files(pattern))
        shard_files = 1 < shards <= num_files
        if shard_files:
            num_files = len(range(shard_index, num_files, shards))
        ds = tf.data.Dataset.list_files(pattern, shuffle=False)
        if shard_files:
            ds = ds.shard(shards, shard_index)
        if training:
            ds = ds.shuffle(num_files, seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(num_files, MAX_INTERLEAVE_CYCLE),
            block_length=1,
            num_parallel_calls=num_parallel_calls,
            deterministic=True if deterministic is None else deterministic,
        )
        if shards > 1 and not shard_files:
            ds = ds.shard(shards, shard_index)
        if training:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        to_example = parse_example
    else:
        raise TypeError(
            f"source must be a CocoDataset or a TFRecord glob pattern, got {type(source).__name__}"
        )
    if repeat:
        ds = ds.repeat()

    def prepare(index, element):
        return prepare_image(
            to_example(element),
            index * shards + shard_index,
            short_side=short_side,
            max_side=max_side,
            training=training,
            jitter=jitter,
            flip=flip,
            max_boxes=max_boxes,
            seed=seed,
            input_norm=input_norm,
            corruption=corruption,
        )

    ds = ds.enumerate().map(
        prepare, num_parallel_calls=num_parallel_calls, deterministic=deterministic
    )
    ds = ds.padded_batch(
        batch_size,
        padded_shapes={
            "images": [None, None, 3],
            "boxes": [max_boxes, 4],
            "classes": [max_boxes],
            "image_ids": [],
            "scales": [],
            "image_sizes": [2],
        },
        padding_values={
            "images": 0.0,
            "boxes": 0.0,
            "classes": -1,
            "image_ids": tf.constant(0, tf.int64),
            "scales": 0.0,
            "image_sizes": 0,
        },
        drop_remainder=drop_remainder,
    )
    ds = ds.map(
        lambda batch: dict(batch, images=pad_to_multiple(batch["images"], pad_multiple)),
        num_parallel_calls=num_parallel_calls,
        deterministic=deterministic,
    )
    return ds.prefetch(tf.data.AUTOTUNE)
