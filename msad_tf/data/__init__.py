"""COCO-format reading, tf.data pipelines, TFRecords and the embedded synthetic dataset."""
from msad_tf.data.coco import CocoDataset, DatasetError, ImageRecord, load_coco_json
from msad_tf.data.pipeline import build_dataset, prepare_image, records_dataset
from msad_tf.data.preprocess import (
    IMAGE_MEAN,
    IMAGE_STD,
    normalize_image,
    pad_to_multiple,
    resize_image,
    resize_scale,
    resized_size,
)
from msad_tf.data.synthetic import (
    CATEGORY_IDS,
    CLASS_NAMES,
    make_synthetic_dataset,
    render_image,
)
from msad_tf.data.tfrecords import parse_example, read_categories, write_tfrecords

__all__ = [
    "CATEGORY_IDS",
    "CLASS_NAMES",
    "CocoDataset",
    "DatasetError",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "ImageRecord",
    "build_dataset",
    "load_coco_json",
    "make_synthetic_dataset",
    "normalize_image",
    "pad_to_multiple",
    "parse_example",
    "prepare_image",
    "read_categories",
    "records_dataset",
    "render_image",
    "resize_image",
    "resize_scale",
    "resized_size",
    "write_tfrecords",
]
