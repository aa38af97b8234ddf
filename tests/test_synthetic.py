"""The embedded synthetic dataset: determinism, layout, size spread, and that resolution matters."""
import hashlib
import json
import math
import os
import time

import numpy as np
import pytest
from PIL import Image

from msad_tf.data import CLASS_NAMES, CocoDataset, make_synthetic_dataset, render_image


def tree_hash(root):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def medium_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    start = time.perf_counter()
    paths = make_synthetic_dataset(str(root), num_train=40, num_val=20, seed=0, progress=False)
    return paths, time.perf_counter() - start


def test_same_seed_same_bytes(tmp_path):
    a = make_synthetic_dataset(str(tmp_path / "a"), num_train=4, num_val=2, seed=7, progress=False)
    b = make_synthetic_dataset(str(tmp_path / "b"), num_train=4, num_val=2, seed=7, progress=False)
    c = make_synthetic_dataset(str(tmp_path / "c"), num_train=4, num_val=2, seed=8, progress=False)
    assert tree_hash(a["root"]) == tree_hash(b["root"])
    assert tree_hash(a["root"]) != tree_hash(c["root"])
    with open(a["val_ann"]) as f, open(c["val_ann"]) as g:
        assert json.load(f)["annotations"] != json.load(g)["annotations"]


def test_existing_dataset_is_reused(tmp_path):
    paths = make_synthetic_dataset(str(tmp_path), num_train=2, num_val=1, progress=False)
    image = os.path.join(paths["train_images"], "train_000000.png")
    stamp = os.stat(image).st_mtime_ns
    assert make_synthetic_dataset(str(tmp_path), num_train=2, num_val=1, progress=False) == paths
    assert os.stat(image).st_mtime_ns == stamp
    os.remove(image)
    make_synthetic_dataset(str(tmp_path), num_train=2, num_val=1, progress=False)
    assert os.path.isfile(image)


def test_layout_counts_and_categories(medium_set):
    paths, _ = medium_set
    assert sorted(os.listdir(paths["root"])) == ["annotations", "train", "val"]
    for split, count in (("train", 40), ("val", 20)):
        with open(paths[f"{split}_ann"]) as f:
            data = json.load(f)
        assert len(data["images"]) == count
        assert len(os.listdir(paths[f"{split}_images"])) == count
        assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5, 6]
        assert [c["name"] for c in data["categories"]] == list(CLASS_NAMES)
        anns = data["annotations"]
        assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        per_image = np.bincount([a["image_id"] for a in anns], minlength=count + 1)[1:]
        assert per_image.min() >= 2 and per_image.max() <= 12
        for image in data["images"]:
            assert (image["height"], image["width"]) == (256, 256)
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256
            assert a["area"] == pytest.approx(w * h, abs=0.01) and a["iscrowd"] == 0
        used = {a["category_id"] for a in data["annotations"]}
        assert used == {1, 2, 3, 4, 5, 6}
        dataset = CocoDataset(paths[f"{split}_ann"], paths[f"{split}_images"])
        assert len(dataset.records) == count and not dataset.skipped and not dataset.adjusted
        assert dataset.num_classes == 6 and dataset.category_ids == [1, 2, 3, 4, 5, 6]


def test_sizes_span_coco_area_ranges(medium_set):
    paths, _ = medium_set
    with open(paths["train_ann"]) as f:
        areas = np.array([a["area"] for a in json.load(f)["annotations"]])
    sides = np.sqrt(areas)
    small = (areas < 32**2).mean()
    medium = ((areas >= 32**2) & (areas < 96**2)).mean()
    large = (areas >= 96**2).mean()
    assert 0.45 <= small <= 0.75 and 0.15 <= medium <= 0.45 and 0.03 <= large <= 0.2
    assert ((sides >= 6 * 0.6) & (sides < 16)).mean() >= 0.25
    assert sides.min() < 8 and sides.max() > 120


def test_generation_speed(medium_set):
    _, seconds = medium_set
    per_image = seconds / 60
    assert per_image < 0.06, f"{per_image * 1000:.0f} ms per image: 1000 images would take > 1 min"


def _crop_profile(image, box, rng, grid=10):
    """Box crop (+25% margin) resampled to grid x grid, projected on its main colour axis.

    The box is shifted by up to 1 pixel of the working resolution, the localization error of
    a detector's feature grid.
    """
    x, y, w, h = box
    x += rng.uniform(-1, 1)
    y += rng.uniform(-1, 1)
    pad = 16
    padded = Image.fromarray(np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    region = (x - 0.25 * w + pad, y - 0.25 * h + pad, x + 1.25 * w + pad, y + 1.25 * h + pad)
    pixels = padded.resize((grid, grid), Image.BILINEAR, box=region)
    pixels = np.asarray(pixels, np.float64).reshape(-1, 3)
    ring = np.zeros((grid, grid), bool)
    ring[[0, -1]] = ring[:, [0, -1]] = True
    deviation = pixels - pixels[ring.reshape(-1)].mean(0)
    profile = deviation @ np.linalg.svd(deviation, full_matrices=False)[2][0]
    if abs(profile.min()) > abs(profile.max()):
        profile = -profile
    return profile / (np.abs(profile).max() + 1e-6)


def _small_object_accuracy(factor, train_images=100, test_images=40):
    """Accuracy of a ridge classifier on crop profiles of objects <= 32 px, per size band."""
    rng = np.random.default_rng(0)

    def collect(seed, count):
        features, labels, sides = [], [], []
        for i in range(count):
            image, objects = render_image(np.random.default_rng([seed, 0, i]), 256)
            if factor > 1:
                image = np.asarray(Image.fromarray(image).reduce(factor))
            for kind, box in objects:
                side = math.sqrt(box[2] * box[3])
                if side <= 32:
                    features.append(_crop_profile(image, [v / factor for v in box], rng))
                    labels.append(kind)
                    sides.append(side)
        return np.array(features), np.array(labels), np.array(sides)

    x, y, _ = collect(100, train_images)
    a = np.c_[x, np.ones(len(x))]
    weights = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(len(CLASS_NAMES))[y])
    x, y, sides = collect(101, test_images)
    predicted = np.argmax(np.c_[x, np.ones(len(x))] @ weights, axis=1)
    tiny, mid = sides < 12, sides >= 16
    return (predicted[tiny] == y[tiny]).mean(), (predicted[mid] == y[mid]).mean()


def test_half_resolution_loses_small_object_identity():
    full_tiny, full_mid = _small_object_accuracy(1)
    half_tiny, half_mid = _small_object_accuracy(2)
    assert full_tiny >= 0.9 and full_mid >= 0.9 and half_mid >= 0.9
    assert half_tiny <= full_tiny - 0.1
