"""COCO-format detection datasets: loading, validation, and what happens to bad input.

``CocoDataset`` reads an annotation file with pycocotools and turns it into ``ImageRecord``s:
boxes in [ymin, xmin, ymax, xmax] original pixels and contiguous classes 0..C-1, where the
class of a category is its position in the sorted list of the file's category ids.

Bad-input policy
----------------
Errors (``DatasetError``, a ``ValueError`` whose message names the offending file):
  * the annotation file is missing, empty (0 bytes), is not valid JSON, is not a JSON object,
    or lacks one of the lists "images", "annotations", "categories";
  * "categories" is empty, a category or image entry lacks its id (or an image its file_name),
    or ids are duplicated;
  * every image of the file was skipped (nothing left to train or evaluate on).
Skipped and counted (``CocoDataset.skipped``, reason -> count; a one-line warning on the
"msad_tf.data" logger lists the counts and the first few file names per reason):
  images
    * ``missing_image_file``: the file does not exist under ``image_dir``;
    * ``corrupt_image``: PIL cannot identify/verify (or, in the full check, decode) it;
    * ``unsupported_format``: a readable image that ``tf.io.decode_image`` cannot decode
      (TIFF, ...); only JPEG, PNG, GIF, BMP and WebP are kept;
    * ``unknown_size``: no height/width in the file and ``check_images=False``;
    * ``exif_rotated``: the EXIF orientation turns the image by 90 degrees and the file's
      height/width are the turned size, so its boxes refer to the displayed image, not to the
      stored pixels the pipeline decodes (see "EXIF orientation" below);
  annotations
    * ``malformed_annotation``: not an object, or no image_id/category_id/bbox of 4 numbers;
    * ``unknown_image``: image_id not in "images";
    * ``unknown_category``: category_id not in "categories";
    * ``crowd``: iscrowd=1 and ``skip_crowd``;
    * ``nan_box``: NaN or infinite coordinates;
    * ``zero_area_box``: width or height <= 0;
    * ``box_outside_image``: positive size but no overlap with the image.
Repaired and counted (``CocoDataset.adjusted``):
  * ``box_clipped``: boxes partly outside the image are clipped to it;
  * ``size_mismatch``: the file's height/width differ from the image file's; the real size
    (from the image header) is used.
Accepted as is: images without annotations (negatives); grayscale, palette, RGBA (alpha
dropped, not composited), 16-bit (v >> 8) and CMYK JPEG images (the pipeline decodes every
image to 8-bit RGB); any size down to 1x1 and any aspect ratio (the resize caps the long side).

EXIF orientation: pixels are used in stored order, as ``tf.io.decode_image`` reads them (and
so do the TFRecord path and the exported serving signatures: training and serving see the
same pixels), and boxes and height/width are taken to refer to that order. Such images are
kept and counted in ``CocoDataset.flagged["exif_orientation"]``, except the detectable case of
boxes drawn on the turned image (``exif_rotated`` above). Needs ``check_images`` not False.

Image checks (``check_images``):
  * ``"verify"``: PIL open + ``verify()`` (header and, for PNG, chunk checksums; no pixel
    decode) plus, for JPEG, a look for the end-of-image marker in the last bytes. Catches
    missing, unidentifiable, unsupported and truncated files at about 0.1 ms per image.
  * ``"full"``: ``"verify"`` plus a full PIL decode; catches every corruption the decoder
    would hit, at the cost of decoding each image once (a few ms per image).
  * ``True`` (default): ``"full"`` for files with at most ``FULL_CHECK_LIMIT`` images,
    ``"verify"`` above (so COCO-sized sets load in seconds, small sets are fully checked).
  * ``False``: only checks that the files exist; sizes come from the annotation file.

``CocoDataset.coco`` is the pycocotools COCO index used as evaluation ground truth. It holds
the file's images and annotations except annotations that cannot be evaluated (malformed,
non-finite bbox, unknown image or category id); missing "area" (taken as bbox w*h) and
"iscrowd" (0) are filled in, and annotation ids are renumbered 1..N only if some are missing,
duplicated or 0 (COCOeval uses 0 as its "unmatched" marker).
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

log = logging.getLogger("msad_tf.data")

TF_DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
FULL_CHECK_LIMIT = 2000
REQUIRED_LISTS = ("images", "annotations", "categories")
_EXAMPLES_PER_REASON = 3
_JPEG_TAIL_BYTES = 4096
_EXIF_ORIENTATION = 0x0112
_EXIF_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class DatasetError(ValueError):
    """An annotation file or image set that cannot be used; the message names the file."""


@dataclass
class ImageRecord:
    """One image and its usable annotations.

    boxes: float32 [N, 4] [ymin, xmin, ymax, xmax] in original pixels, inside the image.
    classes: int32 [N] contiguous class indices.
    """

    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray


def load_coco_json(ann_file: str) -> dict:
    """The parsed annotation file, checked for the three COCO lists; DatasetError otherwise."""
    if not os.path.isfile(ann_file):
        raise DatasetError(f"{ann_file}: annotation file not found")
    if os.path.getsize(ann_file) == 0:
        raise DatasetError(f"{ann_file}: annotation file is empty (0 bytes)")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{ann_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{ann_file}: top level is a JSON {type(data).__name__}, expected a COCO object with "
            f"lists {', '.join(REQUIRED_LISTS)}"
        )
    missing = [key for key in REQUIRED_LISTS if not isinstance(data.get(key), list)]
    if missing:
        raise DatasetError(
            f"{ann_file}: not a COCO detection file: "
            + ", ".join(f"'{k}' is {'missing' if k not in data else 'not a list'}" for k in missing)
        )
    return data


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_entries(ann_file: str, entries: list, kind: str, required: tuple[str, ...]) -> None:
    seen = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            raise DatasetError(f"{ann_file}: {kind}[{i}] has no integer 'id'")
        for key in required:
            if key not in entry:
                raise DatasetError(f"{ann_file}: {kind}[{i}] (id {entry['id']}) has no '{key}'")
        if entry["id"] in seen:
            raise DatasetError(f"{ann_file}: duplicate {kind} id {entry['id']}")
        seen.add(entry["id"])


def _annotation_is_wellformed(ann) -> bool:
    if not isinstance(ann, dict):
        return False
    if not (_is_int(ann.get("image_id")) and _is_int(ann.get("category_id"))):
        return False
    bbox = ann.get("bbox")
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)


def _jpeg_has_end_marker(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - _JPEG_TAIL_BYTES, 0))
        return b"\xff\xd9" in f.read()


def check_image(path: str, full: bool) -> tuple[str | None, tuple[int, int] | None, int]:
    """(skip reason or None, stored (height, width) or None, EXIF orientation 1..8) of one
    image file; see module docstring."""
    orientation = 1
    try:
        with Image.open(path) as im:
            fmt, (width, height) = im.format, im.size
            orientation = _exif_orientation(im)
            im.verify()
        if fmt not in TF_DECODABLE_FORMATS:
            return "unsupported_format", None, orientation
        if fmt in ("JPEG", "MPO") and not _jpeg_has_end_marker(path):
            return "corrupt_image", None, orientation
        if full:
            with Image.open(path) as im:
                im.load()
    except FileNotFoundError:
        return "missing_image_file", None, orientation
    except Exception:
        return "corrupt_image", None, orientation
    return None, (height, width), orientation


def _exif_orientation(im) -> int:
    """EXIF orientation from the header read by ``Image.open`` (no pixel load, so ``verify``
    can follow); 1 when absent or unreadable."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if _is_int(value) and 1 <= value <= 8 else 1


def _check_mode(check_images, num_images: int) -> str | None:
    if check_images is False:
        return None
    if check_images is True:
        return "full" if num_images <= FULL_CHECK_LIMIT else "verify"
    if check_images in ("verify", "full"):
        return check_images
    raise ValueError(f"check_images={check_images!r}: choose True, False, 'verify' or 'full'")


class CocoDataset:
    """A COCO detection annotation file and its image folder, validated (see module docstring).

    Attributes:
      coco: pycocotools COCO index (evaluation ground truth).
      ann_file, image_dir: as given.
      category_ids: sorted dataset category ids; class c is category_ids[c].
      category_names: names in the same order.
      category_to_class: dict category id -> contiguous class.
      num_classes: len(category_ids).
      records: list[ImageRecord], in the order of the file's "images".
      skipped: collections.Counter reason -> number of images or annotations dropped.
      skipped_files: reason -> the first few file names concerned.
      adjusted: collections.Counter of repairs (``box_clipped``, ``size_mismatch``).
      flagged: collections.Counter of images kept as they are but worth a look
        (``exif_orientation``: EXIF orientation other than 1, ignored).
    """

    def __init__(self, ann_file, image_dir, *, check_images=True, skip_crowd=True):
        from pycocotools.coco import COCO

        self.ann_file = str(ann_file)
        self.image_dir = str(image_dir)
        self.skip_crowd = bool(skip_crowd)
        self.skipped: collections.Counter = collections.Counter()
        self.skipped_files: dict[str, list[str]] = {}
        self.adjusted: collections.Counter = collections.Counter()
        self.flagged: collections.Counter = collections.Counter()

        data = load_coco_json(self.ann_file)
        _check_entries(self.ann_file, data["categories"], "categories", ())
        _check_entries(self.ann_file, data["images"], "images", ("file_name",))
        if not data["categories"]:
            raise DatasetError(f"{self.ann_file}: 'categories' is empty")
        if not data["images"]:
            raise DatasetError(f"{self.ann_file}: 'images' is empty")

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]
        self.category_names = [str(c.get("name", c["id"])) for c in categories]
        self.category_to_class = {cid: i for i, cid in enumerate(self.category_ids)}
        self.num_classes = len(self.category_ids)

        images = data["images"]
        self.num_file_images = len(images)
        image_ids = {img["id"] for img in images}
        annotations = self._evaluable_annotations(data["annotations"], images, image_ids)
        data = dict(data, annotations=annotations)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        sizes = self._image_sizes(images, check_images)
        by_image = collections.defaultdict(list)
        for ann in annotations:
            by_image[ann["image_id"]].append(ann)
        self.records: list[ImageRecord] = []
        for img in images:
            if sizes[img["id"]] is None:
                continue
            height, width = sizes[img["id"]]
            anns = by_image.get(img["id"], [])
            boxes, classes = self._convert_annotations(anns, img, height, width)
            self.records.append(
                ImageRecord(
                    image_id=int(img["id"]),
                    path=os.path.join(self.image_dir, img["file_name"]),
                    height=height,
                    width=width,
                    boxes=boxes,
                    classes=classes,
                )
            )
        self._log_summary(len(images))
        if not self.records:
            raise DatasetError(
                f"{self.ann_file}: all {len(images)} images were skipped "
                f"({self._describe(self.skipped)}); is image_dir '{self.image_dir}' right?"
            )

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"CocoDataset({self.ann_file!r}, {len(self.records)} images, "
            f"{self.num_boxes} boxes, {self.num_classes} classes)"
        )

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.classes) for r in self.records))

    def summary(self) -> dict:
        """What was loaded and what was skipped, repaired or flagged, as plain JSON types."""
        return {
            "ann_file": self.ann_file,
            "images_in_file": self.num_file_images,
            "images": len(self.records),
            "boxes": self.num_boxes,
            "classes": self.num_classes,
            "skipped": dict(sorted(self.skipped.items())),
            "adjusted": dict(sorted(self.adjusted.items())),
            "flagged": dict(sorted(self.flagged.items())),
        }

    def _skip(self, reason: str, file_name: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_files.setdefault(reason, [])
        if len(examples) < _EXAMPLES_PER_REASON and file_name not in examples:
            examples.append(file_name)

    def _evaluable_annotations(self, annotations: list, images: list, image_ids: set) -> list:
        names = {img["id"]: img["file_name"] for img in images}
        kept = []
        for ann in annotations:
            if not _annotation_is_wellformed(ann):
                where = names.get(ann.get("image_id"), "?") if isinstance(ann, dict) else "?"
                self._skip("malformed_annotation", where)
                continue
            if ann["image_id"] not in image_ids:
                self._skip("unknown_image", f"image_id {ann['image_id']}")
                continue
            if ann["category_id"] not in self.category_to_class:
                self._skip("unknown_category", names[ann["image_id"]])
                continue
            if not all(math.isfinite(v) for v in ann["bbox"]):
                self._skip("nan_box", names[ann["image_id"]])
                continue
            ann = dict(ann)
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
            kept.append(ann)
        ids = [ann.get("id") for ann in kept]
        if any(not _is_int(i) or i == 0 for i in ids) or len(set(ids)) != len(ids):
            log.warning(
                "%s: annotation ids missing, duplicated or 0; renumbered 1..%d",
                self.ann_file,
                len(kept),
            )
            for i, ann in enumerate(kept, start=1):
                ann["id"] = i
        return kept

    def _image_sizes(self, images: list, check_images) -> dict:
        """image id -> (height, width), or None for a skipped image."""
        mode = _check_mode(check_images, len(images))
        paths = [os.path.join(self.image_dir, img["file_name"]) for img in images]
        if mode is None:
            results = [
                (None, None, 1) if os.path.isfile(p) else ("missing_image_file", None, 1)
                for p in paths
            ]
        else:
            workers = min(8, 2 * (os.cpu_count() or 1))
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(lambda p: check_image(p, mode == "full"), paths))
        sizes = {}
        for img, (reason, size, orientation) in zip(images, results):
            declared = (img.get("height"), img.get("width"))
            declared_ok = all(_is_int(v) and v > 0 for v in declared)
            if reason is None and size is None:
                if declared_ok:
                    size = (int(declared[0]), int(declared[1]))
                else:
                    reason = "unknown_size"
            if reason is None and orientation != 1:
                turned = (size[1], size[0])
                if (orientation in _EXIF_QUARTER_TURNS and declared_ok and size != turned
                        and tuple(declared) == turned):
                    reason = "exif_rotated"
                else:
                    self.flagged["exif_orientation"] += 1
            if reason is not None:
                self._skip(reason, img["file_name"])
                sizes[img["id"]] = None
                continue
            if declared_ok and tuple(declared) != tuple(size):
                self.adjusted["size_mismatch"] += 1
            sizes[img["id"]] = size
        return sizes

    def _convert_annotations(self, annotations: list, img: dict, height: int, width: int):
        boxes, classes = [], []
        for ann in annotations:
            if self.skip_crowd and ann.get("iscrowd", 0):
                self._skip("crowd", img["file_name"])
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                self._skip("zero_area_box", img["file_name"])
                continue
            ymin, xmin = max(y, 0.0), max(x, 0.0)
            ymax, xmax = min(y + h, float(height)), min(x + w, float(width))
            if ymax <= ymin or xmax <= xmin:
                self._skip("box_outside_image", img["file_name"])
                continue
            if (ymin, xmin, ymax, xmax) != (y, x, y + h, x + w):
                self.adjusted["box_clipped"] += 1
            boxes.append((ymin, xmin, ymax, xmax))
            classes.append(self.category_to_class[ann["category_id"]])
        return (
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(classes, np.int32).reshape(-1),
        )

    @staticmethod
    def _describe(counter) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "nothing"

    def _log_summary(self, num_images: int) -> None:
        head = (
            f"{self.ann_file}: {len(self.records)}/{num_images} images, {self.num_boxes} boxes, "
            f"{self.num_classes} classes"
        )
        if self.adjusted:
            head += f"; adjusted: {self._describe(self.adjusted)}"
        if self.flagged:
            head += f"; flagged: {self._describe(self.flagged)}"
        if not self.skipped:
            log.info("%s; nothing skipped", head)
            return
        details = "; ".join(
            f"{reason}={count} (e.g. {', '.join(self.skipped_files.get(reason, []))})"
            for reason, count in sorted(self.skipped.items())
        )
        log.warning("%s; skipped: %s", head, details)
