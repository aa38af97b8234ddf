"""The embedded synthetic detection dataset ("msad_synth"), where input resolution matters.

Six classes come in three pairs that differ only in an interior detail proportional to the
object size, so the detail of a small object survives at full resolution and is lost at
half resolution:
  disk   filled ellipse            ring   ellipse with an elliptic hole
  square filled rectangle          frame  rectangle with a rectangular hole
  plus   "+" along the box axes    x      "x" along the box diagonals
The hole spans 38-55% of the object's width and height (so the wall is 22-31% of it), an arm
is 24-36% of the object's size wide; both are drawn per object, so the strength of the cue
varies within a class. At 6-16 px the hole, or the empty corner between arms, is 2-9 px wide
at full resolution and 1-4.5 px, blurred by the anti-aliased downscale, at half resolution.
Category ids are 1..6 in that order. Every object gets a random colour chosen for contrast
with what lies under it, so colour says nothing about the class.

Object sizes (sqrt of the box area, at image_size 256; all scale with image_size) are
log-uniform within three bands: 40% 6-16 px, 40% 16-64 px, 20% 64-160 px; the aspect ratio is
log-uniform in [2/3, 3/2]. Under COCO's area ranges (small < 32^2 <= medium < 96^2 <= large)
about 60% of the boxes are small, 30% medium, 10% large. Each image holds 2-12 objects,
entirely inside the image, and no box covers more than 20% of another. Boxes are the exact
continuous extents of the drawn shapes ("area" = box w * h).

The background is a smooth random colour field (a 3x3 colour grid upsampled bicubically) with
thin random lines, arcs and soft blobs that are not objects, and low-contrast Gaussian noise
(sigma 4) on top. Shapes are rendered with 4x (2x for large objects) supersampled coverage,
so their edges are anti-aliased like a camera's.

Generation is deterministic: image i of a split uses numpy's Generator seeded with
(seed, split, i), and PNG bytes are identical for the same seed (and library versions).
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger("msad_tf.data")

CLASS_NAMES = ("disk", "ring", "square", "frame", "plus", "x")
CATEGORY_IDS = tuple(range(1, len(CLASS_NAMES) + 1))
SUPERCATEGORIES = ("round", "round", "box", "box", "cross", "cross")
SIZE_BANDS = ((0.4, 6.0, 16.0), (0.4, 16.0, 64.0), (0.2, 64.0, 160.0))
ASPECT_RANGE = (2.0 / 3.0, 1.5)
OBJECTS_PER_IMAGE = (2, 12)
MAX_COVERED = 0.2
HOLE_RANGE = (0.38, 0.55)
ARM_RANGE = (0.24, 0.36)
NOISE_SIGMA = 4.0
MIN_CONTRAST = 100.0
PNG_COMPRESS_LEVEL = 1
Box = tuple[float, float, float, float]
_SPLITS = ("train", "val")
_PARAMS_FILE = "synthetic_params.json"


def _inside(kind: int, u: np.ndarray, v: np.ndarray, detail: float) -> np.ndarray:
    """Boolean mask of the shape in box coordinates u, v in [-1, 1].

    ``detail`` is the hole radius (ring, frame) or the arm half-width (plus, x) in the same
    coordinates; ignored by disk and square.
    """
    name = CLASS_NAMES[kind]
    r2 = u * u + v * v
    inbox = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if name == "disk":
        return r2 <= 1.0
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= detail * detail)
    if name == "square":
        return inbox
    if name == "frame":
        return inbox & ~((np.abs(u) < detail) & (np.abs(v) < detail))
    if name == "plus":
        return inbox & ((np.abs(u) <= detail) | (np.abs(v) <= detail))
    if name == "x":
        half = detail * math.sqrt(2.0)
        return inbox & ((np.abs(u - v) <= half) | (np.abs(u + v) <= half))
    raise ValueError(f"unknown shape {kind}")


def default_detail(kind: int) -> float:
    """Middle of the detail range of a class (hole radius or arm half-width)."""
    lo, hi = HOLE_RANGE if CLASS_NAMES[kind] in ("ring", "frame") else ARM_RANGE
    return (lo + hi) / 2.0


def shape_coverage(kind: int, box, top: int, left: int, rows: int, cols: int, supersample: int = 4,
                   detail: float | None = None):
    """Fraction of each pixel covered by a shape.

    Args:
      kind: class index into CLASS_NAMES.
      box: (x, y, w, h) continuous box in pixels (pixel (r, c) spans [c, c+1) x [r, r+1)).
      top, left, rows, cols: the pixel window to render.
      supersample: samples per pixel along each axis.
      detail: hole radius / arm half-width relative to the half box size (default: the
        middle of the class's range).
    Returns:
      float32 [rows, cols] in [0, 1].
    """
    x, y, w, h = box
    s = supersample
    offsets = (np.arange(s) + 0.5) / s
    ys = (np.arange(top, top + rows)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(left, left + cols)[:, None] + offsets[None, :]).reshape(-1)
    v = ((ys - (y + h / 2.0)) / (h / 2.0))[:, None]
    u = ((xs - (x + w / 2.0)) / (w / 2.0))[None, :]
    detail = default_detail(kind) if detail is None else detail
    mask = _inside(kind, u, v, detail).astype(np.float32)
    return mask.reshape(rows, s, cols, s).mean(axis=(1, 3))


def _sample_size(rng, scale: float) -> tuple[float, float]:
    weights = np.array([band[0] for band in SIZE_BANDS])
    _, lo, hi = SIZE_BANDS[rng.choice(len(SIZE_BANDS), p=weights / weights.sum())]
    size = math.exp(rng.uniform(math.log(lo), math.log(hi))) * scale
    aspect = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
    return size * math.sqrt(aspect), size / math.sqrt(aspect)


def _overlap_ok(box, placed) -> bool:
    x, y, w, h = box
    for px, py, pw, ph in placed:
        iw = min(x + w, px + pw) - max(x, px)
        ih = min(y + h, py + ph) - max(y, py)
        if iw > 0 and ih > 0 and iw * ih > MAX_COVERED * min(w * h, pw * ph):
            return False
    return True


def _place_objects(rng, size: int, scale: float) -> list[tuple[int, Box]]:
    count = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    kinds = rng.integers(0, len(CLASS_NAMES), count)
    dims = sorted((_sample_size(rng, scale) for _ in range(count)), key=lambda d: -d[0] * d[1])
    min_side = SIZE_BANDS[0][1] * scale
    placed, objects = [], []
    for kind, (w, h) in zip(kinds, dims):
        fit = min(1.0, 0.9 * size / max(w, h))
        w, h = w * fit, h * fit
        while min(w, h) >= min_side * 0.6:
            for _ in range(40):
                box = (rng.uniform(0, size - w), rng.uniform(0, size - h), w, h)
                if _overlap_ok(box, placed):
                    break
            else:
                w, h = w * 0.7, h * 0.7
                continue
            placed.append(box)
            objects.append((int(kind), tuple(round(v, 2) for v in box)))
            break
    return objects


def _background(rng, size: int) -> np.ndarray:
    grid = rng.uniform(30, 225, (3, 3, 3)).astype(np.uint8)
    field = Image.fromarray(grid, "RGB").resize((size, size), Image.BICUBIC)
    mean = grid.reshape(-1, 3).mean(0)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(3, 9))):
        points = rng.uniform(-0.1 * size, 1.1 * size, 4)
        tint = tuple(int(c) for c in np.clip(mean + rng.uniform(-70, 70, 3), 0, 255))
        if rng.random() < 0.6:
            draw.line(tuple(points), fill=tint, width=int(rng.integers(1, 3)))
        else:
            x0, y0 = points[:2]
            r = rng.uniform(0.05, 0.3) * size
            start = rng.uniform(0, 360)
            end = start + rng.uniform(40, 160)
            draw.arc((x0 - r, y0 - r, x0 + r, y0 + r), start, end, fill=tint, width=1)
    image = np.asarray(field, np.float32).copy()
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, size, 2)
        sy, sx = rng.uniform(0.03, 0.15, 2) * size
        peak = rng.uniform(0.25, 0.5)
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        top, bottom = max(int(cy - 3 * sy), 0), min(int(cy + 3 * sy) + 1, size)
        left, right = max(int(cx - 3 * sx), 0), min(int(cx + 3 * sx) + 1, size)
        if bottom <= top or right <= left:
            continue
        gy = np.exp(-0.5 * ((np.arange(top, bottom, dtype=np.float32) + 0.5 - cy) / sy) ** 2)
        gx = np.exp(-0.5 * ((np.arange(left, right, dtype=np.float32) + 0.5 - cx) / sx) ** 2)
        alpha = (peak * gy[:, None] * gx[None, :])[..., None]
        window = image[top:bottom, left:right]
        image[top:bottom, left:right] = window * (1 - alpha) + colour * alpha
    return image


def _pick_colour(rng, under: np.ndarray) -> np.ndarray:
    best, best_distance = None, -1.0
    for _ in range(30):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        distance = float(np.linalg.norm(colour - under))
        if distance >= MIN_CONTRAST:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def render_image(rng, size: int, object_scale: float | None = None) -> tuple[np.ndarray, list[tuple[int, Box]]]:
    """One image and its objects.

    Returns:
      (uint8 [size, size, 3], [(class index, (x, y, w, h)), ...]).
    """
    scale = size / 256.0 if object_scale is None else float(object_scale)
    image = _background(rng, size)
    objects = _place_objects(rng, size, scale)
    return _draw_objects(rng, image, objects, scale), objects


def render_object_image(rng, size: int, object_scale: float) -> tuple[np.ndarray, int]:
    """One object of a random class on the dataset's background: the single-label images of
    backbone pre-training (``msad pretrain``).

    The object's size is drawn like the dataset's (shrunk to fit 90% of the image) and its
    position uniformly where it fits. Returns (uint8 [size, size, 3], class index).
    """
    image = _background(rng, size)
    kind = int(rng.integers(0, len(CLASS_NAMES)))
    w, h = _sample_size(rng, object_scale)
    fit = min(1.0, 0.9 * size / max(w, h))
    w, h = w * fit, h * fit
    box = (rng.uniform(0, size - w), rng.uniform(0, size - h), w, h)
    return _draw_objects(rng, image, [(kind, box)], object_scale), kind


def _draw_objects(rng, image: np.ndarray, objects, scale: float) -> np.ndarray:
    """Draws ``objects`` on float ``image`` [size, size, 3] and adds the sensor noise; uint8."""
    size = image.shape[0]
    for kind, box in objects:
        x, y, w, h = box
        left, top = int(math.floor(x)), int(math.floor(y))
        right, bottom = min(int(math.ceil(x + w)), size), min(int(math.ceil(y + h)), size)
        supersample = 4 if max(w, h) < 48 * scale else 2
        lo, hi = HOLE_RANGE if CLASS_NAMES[kind] in ("ring", "frame") else ARM_RANGE
        detail = rng.uniform(lo, hi)
        rows, cols = bottom - top, right - left
        alpha = shape_coverage(kind, box, top, left, rows, cols, supersample, detail)[..., None]
        window = image[top:bottom, left:right]
        under = (window * alpha).sum((0, 1)) / max(float(alpha.sum()), 1e-6)
        colour = _pick_colour(rng, under)
        image[top:bottom, left:right] = window * (1 - alpha) + colour * alpha
    image += NOISE_SIGMA * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _categories() -> list[dict]:
    return [
        {"id": cid, "name": name, "supercategory": sup}
        for cid, name, sup in zip(CATEGORY_IDS, CLASS_NAMES, SUPERCATEGORIES)
    ]


def _write_split(out_dir: str, split: str, split_index: int, count: int, size: int, seed: int,
                 progress: bool, object_scale: float | None = None) -> str:
    from tqdm import tqdm

    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(count), desc=f"msad_synth {split}", disable=not progress):
        rng = np.random.default_rng([seed, split_index, i])
        pixels, objects = render_image(rng, size, object_scale)
        file_name = f"{split}_{i:06d}.png"
        Image.fromarray(pixels, "RGB").save(
            os.path.join(image_dir, file_name), format="PNG", compress_level=PNG_COMPRESS_LEVEL
        )
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for kind, (x, y, w, h) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[kind],
                    "bbox": [x, y, w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
    ann_file = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    with open(ann_file, "w") as f:
        json.dump(
            {
                "info": {"description": "msad_tf synthetic shapes", "seed": seed, "split": split},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": _categories(),
            },
            f,
        )
    return ann_file


def _paths(out_dir: str) -> dict[str, str]:
    paths = {"root": out_dir}
    for split in _SPLITS:
        paths[f"{split}_ann"] = os.path.join(out_dir, "annotations", f"instances_{split}.json")
        paths[f"{split}_images"] = os.path.join(out_dir, split)
    return paths


def _complete(out_dir: str, params: dict) -> bool:
    marker = os.path.join(out_dir, "annotations", _PARAMS_FILE)
    try:
        with open(marker) as f:
            if json.load(f) != params:
                return False
    except (OSError, ValueError):
        return False
    counts = {"train": params["num_train"], "val": params["num_val"]}
    return all(
        os.path.isfile(os.path.join(out_dir, split, f"{split}_{i:06d}.png"))
        for split in _SPLITS
        for i in range(counts[split])
    )


def make_synthetic_dataset(
    out_dir, *, num_train=800, num_val=200, image_size=256, seed=0, progress=True, overwrite=False,
    object_scale: float | None = None,
) -> dict[str, str]:
    """Writes the synthetic dataset in COCO layout under ``out_dir``.

    ``object_scale`` multiplies the object size bands (default image_size / 256, so every
    object keeps its size relative to the image); e.g. 128-px images with object_scale 0.75
    hold objects of 4.5-120 px.

    Layout: annotations/instances_{train,val}.json, train/train_000000.png ...,
    val/val_000000.png ... An existing dataset made with the same arguments is reused unless
    ``overwrite``.
    Returns:
      dict(root, train_ann, train_images, val_ann, val_images) of paths.
    """
    out_dir = os.fspath(out_dir)
    params = {
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    if object_scale is not None:
        params["object_scale"] = float(object_scale)
    paths = _paths(out_dir)
    if not overwrite and _complete(out_dir, params):
        log.info("%s: synthetic dataset already present (%s)", out_dir, params)
        return paths
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    marker = os.path.join(out_dir, "annotations", _PARAMS_FILE)
    if os.path.exists(marker):
        os.remove(marker)
    counts = {"train": params["num_train"], "val": params["num_val"]}
    for split_index, split in enumerate(_SPLITS):
        size, seed = params["image_size"], params["seed"]
        _write_split(out_dir, split, split_index, counts[split], size, seed, progress, params.get("object_scale"))
    with open(marker, "w") as f:
        json.dump(params, f)
    return paths
