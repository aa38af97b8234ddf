"""Detections on image files: JSON in original pixels plus a PNG with the boxes drawn."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, UnidentifiedImageError

from msad_tf.data.preprocess import (
    network_input,
    normalize_image,
    pad_to_multiple,
    resize_image,
)

_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def load_rgb(path: str | Path) -> np.ndarray:
    """Any PIL-readable image (grey, RGBA, palette, 16-bit) as uint8 RGB [H, W, 3]."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                peak = array.max() or 1.0
                image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file not found: {path}") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def detect_image(model, image: np.ndarray, short_side: int, max_side: int, shift: int,
                 pad_multiple: int = 256, stride: int = 1, input_norm: str = "imagenet_std"):
    """Detections for one uint8 image [H, W, 3], boxes [ymin, xmin, ymax, xmax] in its pixels.

    The image is prepared as ``predict_coco`` prepares it: resized, normalised with
    ``input_norm``, padded to ``pad_multiple``, read through ``network_input`` with ``stride``.
    """
    resized, scale = resize_image(tf.constant(image), short_side, max_side)
    size = tf.shape(resized)[:2]
    batch = pad_to_multiple(normalize_image(resized, input_norm)[None], pad_multiple)
    out = model.detect_function(shift)(*network_input(batch, size[None], stride))
    n = int(out["num_detections"][0])
    boxes = out["boxes"][0, :n].numpy() * stride / float(scale)
    return boxes, out["scores"][0, :n].numpy(), out["classes"][0, :n].numpy()


def draw_detections(image: np.ndarray, boxes, scores, classes, names, path: str | Path) -> None:
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box, score, cls in zip(boxes, scores, classes):
        ymin, xmin, ymax, xmax = [float(v) for v in box]
        colour = _COLOURS[int(cls) % len(_COLOURS)]
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=2)
        draw.text((xmin + 2, max(ymin - 11, 0)), f"{names[int(cls)]} {score:.2f}", fill=colour)
    canvas.save(path)


def predict_files(model, paths, out_dir, *, short_side, max_side, shift, category_ids, names,
                  score_threshold=0.3, pad_multiple=256, stride=1, input_norm="imagenet_std") -> list[dict]:
    """Run ``model`` on image files; writes OUT/<stem>.json and OUT/<stem>.png per image.

    Images are prepared by ``detect_image`` (``stride``, ``input_norm`` as there).

    JSON: list of {"bbox": [x, y, w, h] original pixels, "score", "category_id", "category"}.
    Files that cannot be read are reported and skipped. Returns one summary dict per file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    for path in paths:
        path = Path(path)
        try:
            image = load_rgb(path)
        except (FileNotFoundError, ValueError) as err:
            print(f"skipped: {err}")
            summary.append({"file": str(path), "error": str(err)})
            continue
        boxes, scores, classes = detect_image(
            model, image, short_side, max_side, shift, pad_multiple, stride, input_norm
        )
        keep = scores >= score_threshold
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        detections = [
            {
                "bbox": [round(float(b[1]), 2), round(float(b[0]), 2),
                         round(float(b[3] - b[1]), 2), round(float(b[2] - b[0]), 2)],
                "score": round(float(s), 4),
                "category_id": int(category_ids[int(c)]),
                "category": names[int(c)],
            }
            for b, s, c in zip(boxes, scores, classes)
        ]
        (out_dir / f"{path.stem}.json").write_text(json.dumps(detections, indent=1))
        draw_detections(image, boxes, scores, classes, names, out_dir / f"{path.stem}.png")
        summary.append({"file": str(path), "detections": len(detections),
                        "json": str(out_dir / f"{path.stem}.json"), "png": str(out_dir / f"{path.stem}.png")})
    return summary
