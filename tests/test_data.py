"""Preprocessing, the tf.data pipeline and the TFRecord path, on tiny hand-made COCO sets."""
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from msad_tf.data import (
    IMAGE_MEAN,
    IMAGE_STD,
    CocoDataset,
    DatasetError,
    build_dataset,
    normalize_image,
    pad_to_multiple,
    read_categories,
    resize_image,
    resize_scale,
    write_tfrecords,
)


def write_coco(root, images, annotations, categories=((1, "a"), (2, "b"))):
    """images: list of (file_name, uint8 array [H, W, 3]); annotations: (image index, cat, bbox)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, pixels) in enumerate(images):
        Image.fromarray(pixels).save(image_dir / name)
        h, w = pixels.shape[:2]
        entries.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    anns = [
        {"id": j + 1, "image_id": idx + 1, "category_id": cat, "bbox": list(bbox), "iscrowd": 0}
        for j, (idx, cat, bbox) in enumerate(annotations)
    ]
    cats = [{"id": c, "name": n} for c, n in categories]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    return CocoDataset(str(ann_file), str(image_dir))


def noise_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def two_colour_image(h, w):
    """Left half red, right half blue: tells whether an image was flipped."""
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2, 0] = 255
    pixels[:, w // 2 :, 2] = 255
    return pixels


@pytest.fixture
def small_set(tmp_path):
    sizes = [(60, 80), (80, 60), (50, 50), (100, 40), (64, 64)]
    images = [(f"im{i}.png", noise_image(h, w, i)) for i, (h, w) in enumerate(sizes)]
    annotations = [(i, 1 + i % 2, [2.0 + i, 3.0, 10.0 + i, 12.0]) for i in range(5)]
    annotations.append((0, 2, [30, 20, 8, 9]))
    return write_coco(tmp_path, images, annotations)


# ---------------------------------------------------------------- preprocess


@pytest.mark.parametrize(
    "h, w, short, longest, expected",
    [
        (480, 640, 800, 1333, 800 / 480),
        (100, 1000, 800, 1333, 1333 / 1000),
        (256, 256, 128, 1000, 0.5),
        (427, 640, 400, 667, 400 / 427),
        (300, 1200, 400, 667, 667 / 1200),
    ],
)
def test_resize_scale_values(h, w, short, longest, expected):
    assert float(resize_scale(h, w, short, longest)) == pytest.approx(expected, rel=1e-6)
    scale = resize_scale(tf.constant(h), tf.constant(w), short, longest)
    assert float(scale) == pytest.approx(expected, rel=1e-6)


def test_resize_image_size_and_values():
    image = np.full((480, 640, 3), 100, np.uint8)
    resized, scale = resize_image(image, 400, 667)
    assert resized.dtype == tf.float32
    assert float(scale) == pytest.approx(400 / 480)
    assert resized.shape == (400, 533, 3)
    np.testing.assert_allclose(resized.numpy(), 100.0, atol=1e-3)
    resized, scale = resize_image(tf.zeros((101, 50, 3)), 25, 1000)
    assert float(scale) == pytest.approx(0.5)
    assert resized.shape == (51, 25, 3)


def test_resize_image_in_graph_with_unknown_size():
    signature = [tf.TensorSpec([None, None, 3], tf.uint8)]
    fn = tf.function(lambda x: resize_image(x, 32, 64), input_signature=signature)
    resized, scale = fn(tf.zeros((20, 100, 3), tf.uint8))
    assert float(scale) == pytest.approx(0.64)
    assert resized.shape == (13, 64, 3)


def test_normalize_values():
    mean, std = np.array(IMAGE_MEAN), np.array(IMAGE_STD)
    zero = normalize_image(tf.constant([[mean]], tf.float32)).numpy()
    np.testing.assert_allclose(zero, 0.0, atol=1e-5)
    out = normalize_image(np.full((2, 1, 3, 3), 255, np.uint8)).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 1, 3, 3)
    np.testing.assert_allclose(out[0, 0, 0], (255 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0], [2.2489083, 2.4285715, 2.64], rtol=1e-6)


def test_pad_to_multiple_shapes_and_content():
    images = tf.random.uniform((2, 300, 520, 3))
    padded = pad_to_multiple(images, 256)
    assert padded.shape == (2, 512, 768, 3)
    np.testing.assert_array_equal(padded[:, :300, :520].numpy(), images.numpy())
    assert float(tf.reduce_max(tf.abs(padded[:, 300:]))) == 0.0
    assert float(tf.reduce_max(tf.abs(padded[:, :, 520:]))) == 0.0
    assert pad_to_multiple(tf.zeros((1, 256, 512, 3)), 256).shape == (1, 256, 512, 3)
    fn = tf.function(
        lambda x: pad_to_multiple(x, 32), input_signature=[tf.TensorSpec([None, None, None, 3])]
    )
    assert fn(tf.zeros((3, 33, 64, 3))).shape == (3, 64, 64, 3)


# ---------------------------------------------------------------- pipeline


def test_element_shapes_dtypes_and_padding(small_set):
    ds = build_dataset(small_set, short_side=32, max_side=64, batch_size=2, max_boxes=5)
    spec = ds.element_spec
    assert spec["images"].shape.as_list() == [None, None, None, 3]
    assert spec["boxes"].shape.as_list() == [None, 5, 4]
    assert spec["classes"].shape.as_list() == [None, 5]
    batches = list(ds)
    assert [b["images"].shape[0] for b in batches] == [2, 2, 1]
    dtypes = {k: v.dtype for k, v in batches[0].items()}
    assert dtypes == {
        "images": tf.float32,
        "boxes": tf.float32,
        "classes": tf.int32,
        "image_ids": tf.int64,
        "scales": tf.float32,
        "image_sizes": tf.int32,
    }
    b = batches[0]
    assert b["image_ids"].numpy().tolist() == [1, 2]
    assert b["image_sizes"].numpy().tolist() == [[32, 43], [43, 32]]
    np.testing.assert_allclose(b["scales"].numpy(), [32 / 60, 32 / 60], rtol=1e-6)
    assert b["images"].shape[1] % 256 == 0 and b["images"].shape[2] % 256 == 0
    assert b["images"].shape[1:3] == (256, 256)
    assert b["classes"].numpy().tolist() == [[0, 1, -1, -1, -1], [1, -1, -1, -1, -1]]
    np.testing.assert_array_equal(b["boxes"].numpy()[0, 2:], 0.0)
    np.testing.assert_array_equal(b["images"].numpy()[0, 32:], 0.0)
    expected = np.array([3, 2, 15, 12]) * 32 / 60
    np.testing.assert_allclose(b["boxes"].numpy()[0, 0], expected, rtol=1e-6)


def test_known_box_after_resize(tmp_path):
    data = write_coco(tmp_path, [("a.png", two_colour_image(100, 200))], [(0, 2, [20, 10, 40, 20])])
    np.testing.assert_allclose(data.records[0].boxes, [[10, 20, 30, 60]])
    (b,) = list(build_dataset(data, short_side=50, max_side=1000, batch_size=1, max_boxes=3))
    assert float(b["scales"][0]) == pytest.approx(0.5)
    assert b["image_sizes"].numpy().tolist() == [[50, 100]]
    expected = [[5, 10, 15, 30], [0, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(b["boxes"].numpy()[0], expected, atol=1e-5)
    assert b["classes"].numpy().tolist() == [[1, -1, -1]]
    assert b["images"].shape == (1, 256, 256, 3)


def test_flip_moves_boxes_with_pixels(tmp_path):
    data = write_coco(tmp_path, [("a.png", two_colour_image(100, 200))], [(0, 1, [20, 10, 40, 20])])
    ds = build_dataset(
        data, short_side=50, max_side=1000, batch_size=1, training=True, flip=True, repeat=True,
        seed=1,
    )
    seen = set()
    mean, std = np.array(IMAGE_MEAN), np.array(IMAGE_STD)
    for b in ds.take(12):
        left_pixel = b["images"].numpy()[0, 25, 10] * std + mean
        flipped = left_pixel[2] > left_pixel[0]
        expected = [5, 70, 15, 90] if flipped else [5, 10, 15, 30]
        np.testing.assert_allclose(b["boxes"].numpy()[0, 0], expected, atol=1e-4)
        seen.add(bool(flipped))
    assert seen == {True, False}


def test_jitter_scales_boxes_consistently(tmp_path):
    data = write_coco(tmp_path, [("a.png", noise_image(100, 200, 0))], [(0, 1, [20, 10, 40, 20])])
    ds = build_dataset(
        data, short_side=50, max_side=1000, batch_size=1, training=True, jitter=(0.5, 1.0),
        flip=False, repeat=True,
    )
    scales = []
    for b in ds.take(8):
        scale = float(b["scales"][0])
        scales.append(scale)
        h, w = b["image_sizes"].numpy()[0]
        assert 0.25 - 1e-6 <= scale <= 0.5 + 1e-6
        assert h == int(np.floor(100 * scale + 0.5)) and w == int(np.floor(200 * scale + 0.5))
        expected = np.array([10, 20, 30, 60]) * scale
        np.testing.assert_allclose(b["boxes"].numpy()[0, 0], expected, rtol=1e-5)
    assert len(set(np.round(scales, 5))) == 8


def test_max_boxes_keeps_the_first(tmp_path):
    annotations = [(0, 1 + i % 2, [i, i, 5, 5]) for i in range(7)]
    data = write_coco(tmp_path, [("a.png", noise_image(40, 40, 1))], annotations)
    ds = build_dataset(data, short_side=40, max_side=40, batch_size=1, max_boxes=4, pad_multiple=32)
    (b,) = list(ds)
    assert b["images"].shape == (1, 64, 64, 3)
    assert b["classes"].numpy().tolist() == [[0, 1, 0, 1]]
    np.testing.assert_allclose(b["boxes"].numpy()[0, :, 0], [0, 1, 2, 3])


def test_category_ids_map_to_sorted_positions(tmp_path):
    data = write_coco(
        tmp_path, [("a.png", noise_image(20, 20, 2))], [(0, 7, [1, 1, 4, 4]), (0, 3, [2, 2, 4, 4])],
        categories=((7, "seven"), (3, "three")),
    )
    assert data.category_ids == [3, 7] and data.category_names == ["three", "seven"]
    assert data.num_classes == 2
    assert data.records[0].classes.tolist() == [1, 0]


def _take(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_same_seed_same_batches(small_set):
    kwargs = dict(
        short_side=32, max_side=64, batch_size=2, training=True, jitter=(0.6, 1.0), repeat=True
    )
    first = _take(build_dataset(small_set, seed=3, **kwargs), 4)
    again = _take(build_dataset(small_set, seed=3, num_parallel_calls=1, **kwargs), 4)
    other = _take(build_dataset(small_set, seed=4, **kwargs), 4)
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(
        a["image_ids"].tolist() != b["image_ids"].tolist()
        or not np.allclose(a["scales"], b["scales"])
        for a, b in zip(first, other)
    )
    assert all(len(b["image_ids"]) == 2 for b in first)


def test_tfrecords_match_folder(small_set, tmp_path):
    prefix = str(tmp_path / "tfr" / "train")
    paths = write_tfrecords(small_set, prefix, num_shards=2, progress=False)
    names = [p.rsplit("/", 1)[1] for p in paths]
    assert names == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert read_categories(prefix) == ([1, 2], ["a", "b"])
    kwargs = dict(short_side=40, max_side=64, batch_size=2, max_boxes=4)
    folder = _take(build_dataset(small_set, **kwargs), 10)
    records = _take(build_dataset(prefix + "-*.tfrecord", **kwargs), 10)
    assert len(folder) == len(records) == 3
    for a, b in zip(folder, records):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_tfrecord_training_path_is_seeded(small_set, tmp_path):
    prefix = str(tmp_path / "train")
    write_tfrecords(small_set, prefix, num_shards=3, progress=False)
    kwargs = dict(
        short_side=32, max_side=64, batch_size=2, training=True, jitter=(0.8, 1.0), repeat=True,
        seed=5,
    )
    a = _take(build_dataset(prefix + "-*.tfrecord", **kwargs), 3)
    b = _take(build_dataset(prefix + "-*.tfrecord", **kwargs), 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    ids = np.concatenate([x["image_ids"] for x in a])
    assert set(ids.tolist()) <= {1, 2, 3, 4, 5}


@pytest.fixture
def sharded(tmp_path):
    """12 tiny images in 4 TFRecord shards (record i in shard i % 4); the glob pattern."""
    images = [(f"im{i:02d}.png", noise_image(8, 8, i)) for i in range(12)]
    data = write_coco(tmp_path, images, [(i, 1, [1, 1, 4, 4]) for i in range(12)])
    prefix = str(tmp_path / "tfr" / "train")
    write_tfrecords(data, prefix, num_shards=4, progress=False)
    return prefix + "-*.tfrecord"


def _epochs_of_ids(pattern, seed, num_parallel_calls, shuffle_buffer, epochs=2):
    ds = build_dataset(
        pattern, short_side=8, max_side=8, batch_size=1, training=True, repeat=True, seed=seed,
        num_parallel_calls=num_parallel_calls, shuffle_buffer=shuffle_buffer, pad_multiple=8,
    )
    ids = [int(b["image_ids"][0]) for b in ds.take(12 * epochs)]
    return [ids[12 * e : 12 * (e + 1)] for e in range(epochs)]


@pytest.mark.parametrize("shuffle_buffer", [1, 512])
def test_sharded_tfrecord_order_is_set_by_the_seed_alone(sharded, shuffle_buffer):
    first, second = _epochs_of_ids(sharded, 0, 1, shuffle_buffer)
    assert sorted(first) == sorted(second) == list(range(1, 13))
    assert first != second
    for calls in (4, tf.data.AUTOTUNE):
        assert _epochs_of_ids(sharded, 0, calls, shuffle_buffer) == [first, second]
    assert _epochs_of_ids(sharded, 1, 4, shuffle_buffer)[0] != first
    if shuffle_buffer == 1:
        files = [first[i] % 4 for i in range(4)]
        assert sorted(files) == [0, 1, 2, 3]
        assert all(first[i] % 4 == files[i % 4] for i in range(12))


def test_no_tfrecords_matching(tmp_path):
    with pytest.raises(DatasetError, match="nothing-here"):
        pattern = str(tmp_path / "nothing-here-*.tfrecord")
        build_dataset(pattern, short_side=32, max_side=64, batch_size=1)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_input_context_splits_the_data(small_set, tmp_path, num_shards):
    prefix = str(tmp_path / "train")
    write_tfrecords(small_set, prefix, num_shards=num_shards, progress=False)
    for source in (small_set, prefix + "-*.tfrecord"):
        seen = []
        for pipeline in range(2):
            context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
            ds = build_dataset(
                source, short_side=32, max_side=64, batch_size=1, input_context=context
            )
            seen.append(sorted(int(b["image_ids"][0]) for b in ds))
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == [1, 2, 3, 4, 5]
