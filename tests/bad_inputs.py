"""The bad-input corpus: one small generated COCO set per case, and the handling it must get.

Each case writes, under a directory, an annotation file ``ann.json`` holding the good image
``good.png`` (image id 1, one box) next to the bad item (image id 2 when it is an image), so the
outcome is visible: a ``DatasetError`` (``error``, a regex of its message), counted skips
(``skipped``, the exact ``CocoDataset.skipped``), or an image that is kept and decodes correctly
(``check`` looks at its pixels and boxes through the folder and the TFRecord pipelines).
docs/DATA.md lists the same cases; tests/test_bad_input_corpus.py runs them all.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from msad_tf.data import IMAGE_MEAN, IMAGE_STD, build_dataset, write_tfrecords

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
GOOD_BOX = [2, 3, 10, 8]
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    """One corpus entry.

    name: identifier used in the test ids and in docs/DATA.md.
    issue: the item of the bad-input list it covers.
    build: writes the files under a directory and returns the annotation file path.
    error: regex of the DatasetError message, or None when the file loads.
    skipped, flagged, adjusted: the exact counters of the loaded CocoDataset.
    kept: image ids of the loaded records.
    check: extra assertions on the loaded dataset (decoded pixels, boxes).
    """

    name: str
    issue: str
    build: Callable[[Path], str]
    error: str | None = None
    skipped: dict = field(default_factory=dict)
    flagged: dict = field(default_factory=dict)
    adjusted: dict = field(default_factory=dict)
    kept: tuple = (1,)
    check: Callable | None = None


# ------------------------------------------------------------------------ file writers


def noise(h, w, channels=3, seed=0, dtype=np.uint8):
    high = np.iinfo(dtype).max + 1
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype)


def png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): pixels uint16 [H, W, 3]."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    return buffer.getvalue()


def write_set(root: Path, images, annotations, categories=CATEGORIES, content=None) -> str:
    """Writes good.png plus ``images`` and ann.json.

    images: list of (file_name, height, width, bytes or None (no file written)).
    annotations: list of (image id, category id, bbox) added to the good image's box.
    content: replaces the whole JSON text when given.
    """
    Image.fromarray(noise(32, 48, seed=1)).save(root / "good.png")
    entries = [{"id": 1, "file_name": "good.png", "height": 32, "width": 48}]
    for i, (name, h, w, data) in enumerate(images, start=2):
        if data is not None:
            (root / name).write_bytes(data)
        entries.append({"id": i, "file_name": name, "height": h, "width": w})
    anns = [(1, 1, GOOD_BOX)] + list(annotations)
    ann_entries = [
        {"id": j, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}
        for j, (image_id, cat, bbox) in enumerate(anns, start=1)
    ]
    path = root / "ann.json"
    if content is None:
        content = json.dumps({"images": entries, "annotations": ann_entries, "categories": categories})
    path.write_text(content)
    return str(path)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# ------------------------------------------------------------------------ checks


def decoded(data, image_id: int, short_side: int, max_side: int, tmp_dir: Path):
    """(pixels float64 [h, w, 3] on the 0..255 scale, boxes [n, 4], (h, w)) of one image after
    the pipeline (no jitter or flip), the same through the folder and the TFRecord sources."""
    prefix = str(tmp_dir / "tfr" / "corpus")
    write_tfrecords(data, prefix, num_shards=2, progress=False)
    results = []
    for source in (data, prefix + "-*.tfrecord"):
        for batch in build_dataset(source, short_side=short_side, max_side=max_side, batch_size=1,
                                   max_boxes=4, pad_multiple=16):
            if int(batch["image_ids"][0]) == image_id:
                h, w = batch["image_sizes"].numpy()[0]
                pixels = batch["images"].numpy()[0, :h, :w] * np.array(IMAGE_STD) + np.array(IMAGE_MEAN)
                classes = batch["classes"].numpy()[0]
                results.append((pixels, batch["boxes"].numpy()[0][classes >= 0], (int(h), int(w))))
    assert len(results) == 2, f"image {image_id} not found in both pipelines"
    (a, boxes_a, size_a), (b, boxes_b, size_b) = results
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(boxes_a, boxes_b)
    assert size_a == size_b
    return results[0]


def _tmp(data) -> Path:
    return Path(data.ann_file).parent


# ------------------------------------------------------------------------ the corpus


def _truncated_jpeg(root):
    full = encoded(Image.fromarray(noise(64, 64, seed=2)), "JPEG")
    return write_set(root, [("truncated.jpg", 64, 64, full[: len(full) * 2 // 3])], [(2, 1, [1, 1, 9, 9])])


def _png_with_alpha(root):
    rgba = noise(16, 24, channels=4, seed=3)
    return write_set(root, [("alpha.png", 16, 24, encoded(Image.fromarray(rgba, "RGBA"), "PNG"))],
                     [(2, 2, [1, 1, 9, 9])])


def _check_png_with_alpha(data):
    pixels, _, size = decoded(data, 2, 16, 24, _tmp(data))
    rgba = np.asarray(Image.open(_tmp(data) / "alpha.png"))
    assert size == (16, 24)
    np.testing.assert_allclose(pixels, rgba[..., :3], atol=1e-3)


def _png_16bit_gray(root):
    values = noise(12, 20, channels=1, seed=4, dtype=np.uint16)
    return write_set(root, [("gray16.png", 12, 20, encoded(Image.fromarray(values), "PNG"))], [])


def _check_png_16bit_gray(data):
    pixels, _, _ = decoded(data, 2, 12, 20, _tmp(data))
    values = np.asarray(Image.open(_tmp(data) / "gray16.png")).astype(np.uint16)
    assert values.max() > 255
    np.testing.assert_allclose(pixels, np.repeat((values >> 8)[..., None], 3, -1), atol=1e-3)


def _png_16bit_rgb(root):
    return write_set(root, [("rgb16.png", 12, 20, png_16bit_rgb(noise(12, 20, seed=5, dtype=np.uint16)))], [])


def _check_png_16bit_rgb(data):
    pixels, _, _ = decoded(data, 2, 12, 20, _tmp(data))
    np.testing.assert_allclose(pixels, noise(12, 20, seed=5, dtype=np.uint16) >> 8, atol=1e-3)


CMYK_COLOURS = np.array([[[200, 30, 40], [20, 180, 60]], [[10, 20, 230], [250, 250, 250]]], np.uint8)


def _cmyk_jpeg(root):
    rgb = np.kron(CMYK_COLOURS, np.ones((8, 8, 1), np.uint8))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    return write_set(root, [("cmyk.jpg", 16, 16, encoded(cmyk, "JPEG", quality=100))], [(2, 1, [0, 0, 8, 8])])


def _check_cmyk_jpeg(data):
    pixels, _, size = decoded(data, 2, 16, 16, _tmp(data))
    assert Image.open(_tmp(data) / "cmyk.jpg").mode == "CMYK" and size == (16, 16)
    np.testing.assert_allclose(pixels, np.kron(CMYK_COLOURS, np.ones((8, 8, 1))), atol=3)


def _one_pixel(root):
    pixel = np.array([[[10, 200, 30]]], np.uint8)
    return write_set(root, [("dot.png", 1, 1, encoded(Image.fromarray(pixel), "PNG"))], [(2, 2, [0, 0, 1, 1])])


def _check_one_pixel(data):
    pixels, boxes, size = decoded(data, 2, 16, 16, _tmp(data))
    assert size == (16, 16)
    np.testing.assert_allclose(pixels, np.broadcast_to([10, 200, 30], (16, 16, 3)), atol=1e-3)
    np.testing.assert_allclose(boxes, [[0, 0, 16, 16]])


def _long_thin(root):
    strip = np.zeros((10, 10000, 3), np.uint8)
    strip[:, 5000:7500] = 255
    return write_set(root, [("strip.png", 10, 10000, encoded(Image.fromarray(strip), "PNG"))],
                     [(2, 1, [5000, 2, 2500, 6])])


def _check_long_thin(data):
    pixels, boxes, size = decoded(data, 2, 32, 48, _tmp(data))
    scale = 48 / 10000
    assert size == (1, 48)
    np.testing.assert_allclose(boxes, [[2 * scale, 24, 8 * scale, 36]], rtol=1e-5)
    np.testing.assert_allclose(pixels[0, 25:35], 255, atol=1e-3)
    np.testing.assert_allclose(pixels[0, :23], 0, atol=1e-3)


EXIF_PIXELS = np.stack(np.broadcast_arrays(*np.ogrid[0:240:10, 0:240:6], 128), -1).astype(np.uint8)


def _exif_stored_order(root):
    data = jpeg_with_orientation(EXIF_PIXELS, 6)
    return write_set(root, [("phone.jpg", 24, 40, data)], [(2, 1, [4, 2, 10, 6])])


def _check_exif_stored_order(data):
    pixels, boxes, size = decoded(data, 2, 24, 40, _tmp(data))
    stored = np.asarray(Image.open(_tmp(data) / "phone.jpg"), np.float64)
    assert size == (24, 40) and stored.shape == (24, 40, 3)
    for reference in (stored, EXIF_PIXELS):
        assert np.abs(pixels - reference).mean() < 2 and np.abs(pixels - reference).max() <= 8
    np.testing.assert_allclose(boxes, [[2, 4, 8, 14]])


def _exif_displayed_size(root):
    data = jpeg_with_orientation(EXIF_PIXELS, 6)
    return write_set(root, [("phone.jpg", 40, 24, data)], [(2, 1, [2, 4, 6, 10])])


def _negative_size(root):
    return write_set(root, [], [(1, 1, [5, 5, -3, 4]), (1, 2, [5, 5, 4, -3])])


def _check_good_box_only(data):
    np.testing.assert_allclose(data.records[0].boxes, [[3, 2, 11, 12]])


def _nan_coordinates(root):
    return write_set(root, [], [(1, 1, [float("nan"), 1, 5, 5]), (1, 2, [1, 1, float("inf"), 5])])


def _null_coordinates(root):
    return write_set(root, [], [(1, 1, [None, 1, 5, 5])])


def _duplicate_image_ids(root):
    path = write_set(root, [("good.png", 32, 48, None)], [])
    content = json.loads(Path(path).read_text())
    content["images"][1]["id"] = 1
    Path(path).write_text(json.dumps(content))
    return path


def _unknown_category(root):
    return write_set(root, [], [(1, 99, [1, 1, 5, 5])])


def _empty_annotation_file(root):
    return write_set(root, [], [], content="")


def _no_images(root):
    return write_set(root, [], [], content=json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))


def _missing_image(root):
    return write_set(root, [("gone.png", 32, 48, None)], [(2, 1, [1, 1, 5, 5])])


def _not_an_image(root):
    return write_set(root, [("text.png", 32, 48, b"this is not an image")], [])


def _tiff(root):
    return write_set(root, [("scan.tif", 32, 48, encoded(Image.fromarray(noise(32, 48)), "TIFF"))], [])


def _all_bad(root):
    path = write_set(root, [("gone.png", 32, 48, None)], [])
    content = json.loads(Path(path).read_text())
    content["images"][0]["file_name"] = "also_gone.png"
    Path(path).write_text(json.dumps(content))
    return path


CORPUS = (
    Case("truncated_jpeg", "truncated JPEG", _truncated_jpeg, skipped={"corrupt_image": 1}),
    Case("png_with_alpha", "PNG with alpha", _png_with_alpha, kept=(1, 2), check=_check_png_with_alpha),
    Case("png_16bit_gray", "16-bit PNG", _png_16bit_gray, kept=(1, 2), check=_check_png_16bit_gray),
    Case("png_16bit_rgb", "16-bit PNG", _png_16bit_rgb, kept=(1, 2), check=_check_png_16bit_rgb),
    Case("cmyk_jpeg", "CMYK JPEG", _cmyk_jpeg, kept=(1, 2), check=_check_cmyk_jpeg),
    Case("one_pixel_image", "1x1 image", _one_pixel, kept=(1, 2), check=_check_one_pixel),
    Case("image_10000x10", "10000x10 image", _long_thin, kept=(1, 2), check=_check_long_thin),
    Case("exif_rotated", "EXIF-rotated image", _exif_stored_order, kept=(1, 2),
         flagged={"exif_orientation": 1}, check=_check_exif_stored_order),
    Case("exif_rotated_boxes_on_turned_image", "EXIF-rotated image", _exif_displayed_size,
         skipped={"exif_rotated": 1}),
    Case("negative_size_box", "boxes with negative size", _negative_size,
         skipped={"zero_area_box": 2}, check=_check_good_box_only),
    Case("nan_coordinates", "NaN coordinates", _nan_coordinates, skipped={"nan_box": 2},
         check=_check_good_box_only),
    Case("null_coordinates", "NaN coordinates", _null_coordinates,
         skipped={"malformed_annotation": 1}, check=_check_good_box_only),
    Case("duplicate_image_ids", "duplicate image ids", _duplicate_image_ids,
         error=r"ann\.json: duplicate images id 1"),
    Case("unknown_category", "category ids not in the list", _unknown_category,
         skipped={"unknown_category": 1}, check=_check_good_box_only),
    Case("empty_annotation_file", "empty annotation file", _empty_annotation_file,
         error=r"ann\.json: annotation file is empty \(0 bytes\)"),
    Case("annotation_file_without_images", "empty annotation file", _no_images,
         error=r"ann\.json: 'images' is empty"),
    Case("missing_image_file", "missing image file", _missing_image, skipped={"missing_image_file": 1}),
    Case("not_an_image", "(extra) garbage bytes named .png", _not_an_image, skipped={"corrupt_image": 1}),
    Case("tiff_image", "(extra) format TensorFlow cannot decode", _tiff,
         skipped={"unsupported_format": 1}),
    Case("every_image_bad", "(extra) nothing left to use", _all_bad,
         error=r"ann\.json: all 2 images were skipped \(missing_image_file=2\)"),
)
