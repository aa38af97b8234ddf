"""TFRecord shards of a CocoDataset: writing, and parsing back into the pipeline's raw form.

Each shard holds one ``tf.train.Example`` per image:
  image/encoded   bytes, the original image file
  image/id        int64
  image/height    int64, original pixels
  image/width     int64
  image/filename  bytes, the file name relative to the image folder
  boxes           float list, [ymin, xmin, ymax, xmax] * N flattened, original pixels
  classes         int64 list [N], contiguous class indices
Records go to shards round-robin (record i to shard i % num_shards), so interleaving the
shards in file order with one element per shard reproduces the dataset's record order.
``{prefix}-categories.json`` stores {"ids": [...], "names": [...]} of the contiguous classes.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from msad_tf.data.coco import CocoDataset

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "boxes": tf.io.VarLenFeature(tf.float32),
    "classes": tf.io.VarLenFeature(tf.int64),
}


def shard_paths(output_prefix: str, num_shards: int) -> list[str]:
    """["{prefix}-00000-of-0000N.tfrecord", ...]."""
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def categories_path(output_prefix: str) -> str:
    return f"{output_prefix}-categories.json"


def _example(record, encoded: bytes, file_name: str) -> tf.train.Example:
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    def raw(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        "image/encoded": raw(encoded),
        "image/id": ints([record.image_id]),
        "image/height": ints([record.height]),
        "image/width": ints([record.width]),
        "image/filename": raw(file_name.encode("utf-8")),
        "boxes": floats(record.boxes.reshape(-1)),
        "classes": ints(record.classes),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecords(
    dataset: CocoDataset, output_prefix: str, num_shards: int, progress=True
) -> list[str]:
    """Writes ``dataset.records`` to ``num_shards`` shards and the categories file.

    Returns the shard paths "{output_prefix}-00000-of-0000N.tfrecord", ...
    """
    from tqdm import tqdm

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    directory = os.path.dirname(output_prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    paths = shard_paths(output_prefix, num_shards)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        name = os.path.basename(output_prefix)
        records = tqdm(dataset.records, desc=f"writing {name}", disable=not progress)
        for i, record in enumerate(records):
            with open(record.path, "rb") as f:
                encoded = f.read()
            file_name = os.path.relpath(record.path, dataset.image_dir)
            writers[i % num_shards].write(_example(record, encoded, file_name).SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    with open(categories_path(output_prefix), "w") as f:
        json.dump(
            {"ids": list(dataset.category_ids), "names": list(dataset.category_names)}, f, indent=2
        )
    return paths


def read_categories(output_prefix: str) -> tuple[list[int], list[str]]:
    """(category ids, names) written next to the shards by ``write_tfrecords``."""
    with open(categories_path(output_prefix)) as f:
        data = json.load(f)
    return [int(i) for i in data["ids"]], [str(n) for n in data["names"]]


def parse_example(serialized):
    """One serialized Example -> dict(encoded string, image_id int64, boxes float32 [N, 4],
    classes int32 [N])."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    boxes = tf.reshape(tf.sparse.to_dense(parsed["boxes"]), [-1, 4])
    classes = tf.cast(tf.sparse.to_dense(parsed["classes"]), tf.int32)
    return {
        "encoded": parsed["image/encoded"],
        "image_id": parsed["image/id"],
        "boxes": boxes,
        "classes": classes,
    }
