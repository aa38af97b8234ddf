"""The bad-input policy of msad_tf.data.coco, one case per test, on files built with PIL."""
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from msad_tf.data import IMAGE_MEAN, IMAGE_STD, CocoDataset, DatasetError, build_dataset

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def save_image(path, h=32, w=48, mode="RGB", fmt=None, seed=0):
    rng = np.random.default_rng(seed)
    if mode in ("L", "P"):
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        if mode == "P":
            image = image.convert("P")
    else:
        image = Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8), mode)
    image.save(path, format=fmt)


def write_ann(root, images, annotations, categories=CATEGORIES, name="ann.json"):
    """images: list of (file_name, h, w); annotations: (image index, category id, bbox[, extra])."""
    entries = [
        {"id": i + 1, "file_name": f, "height": h, "width": w} for i, (f, h, w) in enumerate(images)
    ]
    anns = []
    for j, ann in enumerate(annotations):
        idx, cat, bbox = ann[:3]
        entry = {"id": j + 1, "image_id": idx + 1, "category_id": cat, "bbox": bbox, "iscrowd": 0}
        entry.update(ann[3] if len(ann) > 3 else {})
        anns.append(entry)
    path = root / name
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return str(path)


def one_image_dataset(tmp_path, annotations, h=32, w=48, **kwargs):
    save_image(tmp_path / "a.png", h, w)
    ann = write_ann(tmp_path, [("a.png", h, w)], annotations)
    return CocoDataset(ann, str(tmp_path), **kwargs)


def test_missing_annotation_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DatasetError, match="nope.json.*not found"):
        CocoDataset(str(path), str(tmp_path))


def test_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match="broken.json.*not valid JSON"):
        CocoDataset(str(path), str(tmp_path))


@pytest.mark.parametrize(
    "content, problem",
    [
        ([1, 2, 3], "top level is a JSON list"),
        ({"images": [], "categories": []}, "'annotations' is missing"),
        ({"images": {}, "annotations": [], "categories": []}, "'images' is not a list"),
    ],
)
def test_annotation_file_that_is_not_coco(tmp_path, content, problem):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="other.json") as info:
        CocoDataset(str(path), str(tmp_path))
    assert problem in str(info.value)


def test_missing_image_file_is_skipped_and_counted(tmp_path, caplog):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "c.png")
    ann = write_ann(
        tmp_path, [("a.png", 32, 48), ("gone.png", 32, 48), ("c.png", 32, 48)],
        [(0, 1, [1, 1, 5, 5]), (1, 1, [1, 1, 5, 5]), (2, 2, [1, 1, 5, 5])],
    )
    with caplog.at_level(logging.WARNING, logger="msad_tf.data"):
        data = CocoDataset(ann, str(tmp_path))
    assert [r.image_id for r in data.records] == [1, 3]
    assert data.skipped["missing_image_file"] == 1
    assert data.skipped_files["missing_image_file"] == ["gone.png"]
    assert "missing_image_file=1" in caplog.text and "gone.png" in caplog.text


def test_all_images_missing_is_an_error(tmp_path):
    ann = write_ann(tmp_path, [("x.png", 32, 48), ("y.png", 32, 48)], [])
    with pytest.raises(DatasetError, match="ann.json: all 2 images were skipped"):
        CocoDataset(ann, str(tmp_path))


@pytest.mark.parametrize("check", [True, "verify", "full"])
def test_corrupt_and_truncated_images_are_skipped(tmp_path, check):
    save_image(tmp_path / "good.png")
    buffer = io.BytesIO()
    save_image(buffer, 64, 64, fmt="PNG", seed=1)
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    save_image(buffer, 64, 64, fmt="JPEG", seed=2)
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all")
    names = ["good.png", "truncated.png", "truncated.jpg", "garbage.png"]
    annotations = [(i, 1, [1, 1, 5, 5]) for i in range(4)]
    ann = write_ann(tmp_path, [(n, 64, 64) for n in names], annotations)
    data = CocoDataset(ann, str(tmp_path), check_images=check)
    assert [r.path.rsplit("/", 1)[1] for r in data.records] == ["good.png"]
    assert data.skipped["corrupt_image"] == 3
    assert data.adjusted["size_mismatch"] == 1
    assert (data.records[0].height, data.records[0].width) == (32, 48)


def test_unsupported_format_is_skipped(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.tif", fmt="TIFF")
    ann = write_ann(tmp_path, [("a.png", 32, 48), ("b.tif", 32, 48)], [])
    data = CocoDataset(ann, str(tmp_path))
    assert len(data.records) == 1 and data.skipped["unsupported_format"] == 1


def test_zero_area_box_dropped(tmp_path):
    data = one_image_dataset(
        tmp_path, [(0, 1, [5, 5, 0, 10]), (0, 1, [5, 5, 10, -2]), (0, 2, [5, 5, 10, 10])]
    )
    assert data.skipped["zero_area_box"] == 2
    np.testing.assert_allclose(data.records[0].boxes, [[5, 5, 15, 15]])
    assert data.records[0].classes.tolist() == [1]


def test_box_outside_image_clipped_or_dropped(tmp_path):
    data = one_image_dataset(
        tmp_path,
        [
            (0, 1, [-4, 20, 10, 30]),
            (0, 2, [40, -5, 20, 10]),
            (0, 1, [60, 5, 10, 10]),
            (0, 1, [5, -20, 5, 10]),
        ],
    )
    np.testing.assert_allclose(data.records[0].boxes, [[20, 0, 32, 6], [0, 40, 5, 48]])
    assert data.records[0].classes.tolist() == [0, 1]
    assert data.skipped["box_outside_image"] == 2
    assert data.adjusted["box_clipped"] == 2


def test_nan_and_inf_boxes_dropped(tmp_path):
    data = one_image_dataset(
        tmp_path,
        [(0, 1, [float("nan"), 1, 5, 5]), (0, 1, [1, 1, float("inf"), 5]), (0, 2, [1, 2, 3, 4])],
    )
    assert data.skipped["nan_box"] == 2
    np.testing.assert_allclose(data.records[0].boxes, [[2, 1, 6, 4]])
    assert len(data.coco.getAnnIds()) == 1


def test_unknown_category_dropped(tmp_path):
    data = one_image_dataset(tmp_path, [(0, 9, [1, 1, 5, 5]), (0, 2, [1, 1, 5, 5])])
    assert data.skipped["unknown_category"] == 1
    assert data.records[0].classes.tolist() == [1]


def test_malformed_and_unknown_image_annotations_dropped(tmp_path):
    data = one_image_dataset(
        tmp_path, [(0, 1, [1, 1, 5]), (0, 1, "box"), (6, 1, [1, 1, 5, 5]), (0, 1, [1, 1, 5, 5])]
    )
    assert data.skipped["malformed_annotation"] == 2
    assert data.skipped["unknown_image"] == 1
    assert len(data.records[0].classes) == 1


def test_crowd_dropped_unless_asked(tmp_path):
    annotations = [(0, 1, [1, 1, 5, 5], {"iscrowd": 1}), (0, 2, [2, 2, 5, 5])]
    data = one_image_dataset(tmp_path, annotations)
    assert data.skipped["crowd"] == 1 and data.records[0].classes.tolist() == [1]
    data = one_image_dataset(tmp_path, annotations, skip_crowd=False)
    assert data.skipped["crowd"] == 0 and data.records[0].classes.tolist() == [0, 1]


def test_image_without_annotations_is_kept(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "empty.png", seed=3)
    ann = write_ann(tmp_path, [("a.png", 32, 48), ("empty.png", 32, 48)], [(0, 1, [1, 1, 5, 5])])
    data = CocoDataset(ann, str(tmp_path))
    assert len(data.records) == 2
    assert data.records[1].boxes.shape == (0, 4) and data.records[1].classes.shape == (0,)
    batches = list(build_dataset(data, short_side=32, max_side=48, batch_size=2, max_boxes=3))
    assert batches[0]["classes"].numpy().tolist() == [[0, -1, -1], [-1, -1, -1]]
    np.testing.assert_array_equal(batches[0]["boxes"].numpy()[1], 0.0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_palette_decode_to_rgb(tmp_path, mode):
    save_image(tmp_path / "a.png", 16, 16, mode=mode, seed=4)
    ann = write_ann(tmp_path, [("a.png", 16, 16)], [(0, 1, [1, 1, 5, 5])])
    data = CocoDataset(ann, str(tmp_path))
    (b,) = list(build_dataset(data, short_side=16, max_side=16, batch_size=1, pad_multiple=16))
    assert b["images"].shape == (1, 16, 16, 3)
    pixels = b["images"].numpy()[0] * np.array(IMAGE_STD) + np.array(IMAGE_MEAN)
    expected = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"), np.float64)
    np.testing.assert_allclose(pixels, expected, atol=1e-3)


def test_size_mismatch_uses_the_real_size(tmp_path):
    save_image(tmp_path / "a.png", 32, 48)
    ann = write_ann(tmp_path, [("a.png", 64, 64)], [(0, 1, [40, 20, 20, 20])])
    data = CocoDataset(ann, str(tmp_path))
    assert (data.records[0].height, data.records[0].width) == (32, 48)
    np.testing.assert_allclose(data.records[0].boxes, [[20, 40, 32, 48]])
    assert data.adjusted["size_mismatch"] == 1


def test_bad_ids_raise_or_renumber(tmp_path):
    save_image(tmp_path / "a.png")
    path = tmp_path / "dup.json"
    image = {"id": 1, "file_name": "a.png", "height": 32, "width": 48}
    content = {"images": [image, image], "annotations": [], "categories": CATEGORIES}
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="dup.json: duplicate images id 1"):
        CocoDataset(str(path), str(tmp_path))
    anns = [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
            {"image_id": 1, "category_id": 2, "bbox": [2, 2, 4, 4]}]
    path.write_text(json.dumps({"images": [image], "annotations": anns, "categories": CATEGORIES}))
    data = CocoDataset(str(path), str(tmp_path))
    assert sorted(data.coco.getAnnIds()) == [1, 2]
    assert [a["area"] for a in data.coco.loadAnns([1, 2])] == [16.0, 16.0]
