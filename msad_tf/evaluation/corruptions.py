"""Common image corruptions for robustness evaluation, in the style of COCO-C.

Michaelis et al., "Benchmarking Robustness in Object Detection" (2019) evaluate detectors on
COCO val images corrupted by the ImageNet-C corruptions (Hendrycks & Dietterich, 2019) of the
``imagecorruptions`` package at severities 1..5, and report P (clean AP), mPC (AP averaged over
corruptions and severities) and rPC = mPC / P. This module re-implements a few families with
numpy and Pillow, with the package's severity constants (``SEVERITY_CONSTANTS``):

  gaussian_noise    x + N(0, c^2) on the 0..1 scale, c = 0.08 0.12 0.18 0.26 0.38
  gaussian_blur     Gaussian filter, sigma c = 1 2 3 4 6 px (edge-replicated borders,
                    truncated at 4 sigma: skimage.filters.gaussian)
  defocus_blur      disk kernel (radius, antialias sigma) = (3, 0.1) (4, 0.5) (6, 0.5)
                    (8, 0.5) (10, 0.5) (reflect-101 borders: cv2.filter2D)
  contrast          (x - mean) * c + mean per channel, c = 0.4 0.3 0.2 0.1 0.05
  brightness        HSV value + c, c = 0.1 0.2 0.3 0.4 0.5 (done in RGB: the hue and saturation
                    are kept, so each pixel is scaled by min(V + c, 1) / V)
  jpeg_compression  Pillow JPEG encode/decode at quality c = 25 18 15 10 7
  fog               plasma fractal (diamond-square) haze, (strength, roughness decay) =
                    (1.5, 2) (2, 2) (2.5, 1.7) (2.5, 1.5) (3, 1.4)

Differences from the package, on purpose:

* Randomness (gaussian_noise, fog) never comes from the global RNG: each image draws from a
  numpy Generator seeded with (the family name, the image id). The same image therefore gets
  the same corruption in every evaluation (at H and at L, in every run), different images get
  different noise, and the severities of a family scale the same random field (common random
  numbers), so the distortion grows monotonically with the severity on every image.
* The result is rounded to uint8 (the package truncates with ``np.uint8``, darkening by half a
  grey level on average).

Severity 0 (or the name ``none``) is the identity. A corruption is applied to the decoded uint8
original image, before any resizing or normalisation (``build_dataset(corruption=...)``), as
COCO-C corrupts the original COCO images; the blur sizes are therefore in original pixels.
"""
from __future__ import annotations

import dataclasses
import io
import zlib

import numpy as np

#: family -> the five severity constants of ``imagecorruptions`` (see the module docstring).
SEVERITY_CONSTANTS: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "fog": ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
}
FAMILIES = tuple(SEVERITY_CONSTANTS)
SEVERITIES = (1, 2, 3, 4, 5)
#: seeds the per-image random streams; change it to draw a different benchmark.
SEED_VERSION = 1


def check_corruption(name: str, severity: int) -> None:
    """ValueError unless ``name`` is a family (or ``none``) and ``severity`` is 0..5."""
    if name != "none" and name not in SEVERITY_CONSTANTS:
        raise ValueError(f"unknown corruption '{name}': choose {', '.join(FAMILIES)}")
    if int(severity) != severity or not 0 <= severity <= 5:
        raise ValueError(f"corruption severity {severity}: choose 0 (none) to 5")


def corruption_rng(name: str, image_id: int) -> np.random.Generator:
    """The random stream of family ``name`` on image ``image_id`` (independent of the severity
    and of every global RNG; ``zlib.crc32`` because ``hash`` of a str changes per process)."""
    return np.random.default_rng([SEED_VERSION, zlib.crc32(name.encode()), int(image_id) % 2**63])


def corrupt(image, name: str, severity: int, image_id: int = 0) -> np.ndarray:
    """``image`` corrupted by family ``name`` at ``severity``.

    Args:
      image: uint8 [H, W, 3] (or [H, W]) RGB.
      name: one of ``FAMILIES`` (or ``none``).
      severity: 0 (identity) .. 5.
      image_id: seeds the random families (``corruption_rng``).
    Returns:
      uint8 array of the shape of ``image`` (``image`` itself at severity 0).
    """
    check_corruption(name, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"corrupt expects a uint8 image, got {image.dtype}")
    if name == "none" or severity == 0:
        return image
    c = SEVERITY_CONSTANTS[name][severity - 1]
    if name == "jpeg_compression":
        return _jpeg(image, c)
    x = image.astype(np.float64) / 255.0
    if name == "gaussian_noise":
        x = x + c * corruption_rng(name, image_id).standard_normal(x.shape)
    elif name == "gaussian_blur":
        x = _per_channel(x, lambda channel: _gaussian_filter(channel, c))
    elif name == "defocus_blur":
        kernel = disk_kernel(*c)
        x = _per_channel(x, lambda channel: _filter2d(channel, kernel, "reflect"))
    elif name == "contrast":
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = (x - mean) * c + mean
    elif name == "brightness":
        x = _brightness(x, c)
    elif name == "fog":
        x = _fog(x, *c, corruption_rng(name, image_id))
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """A family at a severity, applied per image (``apply`` on numpy, ``tf_apply`` in tf.data)."""

    name: str
    severity: int

    def __post_init__(self):
        check_corruption(self.name, self.severity)

    @property
    def label(self) -> str:
        return "clean" if self.is_identity else f"{self.name}/s{self.severity}"

    @property
    def is_identity(self) -> bool:
        return self.name == "none" or self.severity == 0

    def apply(self, image, image_id: int = 0) -> np.ndarray:
        return corrupt(image, self.name, self.severity, image_id)

    def tf_apply(self, image, image_id):
        """The corruption of a uint8 [H, W, 3] tensor (``tf.numpy_function``, graph-safe), the
        hook of ``build_dataset(corruption=...)``."""
        import tensorflow as tf

        if self.is_identity:
            return image
        out = tf.numpy_function(
            lambda x, i: corrupt(x, self.name, self.severity, int(i)), [image, image_id], tf.uint8,
            stateful=False,
        )
        out.set_shape(image.shape)
        return out


def psnr(reference, image) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when equal)."""
    mse = np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


# ---------------------------------------------------------------------------------- families
def _per_channel(x, function):
    if x.ndim == 2:
        return function(x)
    return np.stack([function(x[..., d]) for d in range(x.shape[-1])], axis=-1)


def _jpeg(image, quality: int) -> np.ndarray:
    """Pillow JPEG round trip at ``quality`` (Pillow's default 4:2:0 chroma subsampling)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert("L" if image.ndim == 2 else "RGB"))
    return out.reshape(image.shape)


def _brightness(x, c):
    """HSV value + c with hue and saturation kept: RGB = V * f(H, S), so every pixel is scaled
    by min(V + c, 1) / V; black pixels (S = 0) become grey min(c, 1)."""
    if x.ndim == 2:
        return x + c
    value = x.max(axis=-1, keepdims=True)
    new_value = np.minimum(value + c, 1.0)
    ratio = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, x * ratio, new_value)


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised Gaussian taps of radius int(truncate * sigma + 0.5) (scipy.ndimage)."""
    radius = int(truncate * float(sigma) + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / float(sigma)) ** 2)
    return taps / taps.sum()


def _gaussian_filter(channel, sigma):
    """skimage.filters.gaussian of one channel: separable, edge-replicated borders."""
    taps = gaussian_kernel_1d(sigma)
    return _filter2d(channel, np.outer(taps, taps), "edge")


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """imagecorruptions' defocus kernel: a normalised disk on a 17x17 grid (radius <= 8, else
    (2 radius + 1)^2) smoothed by a 3x3 (5x5) Gaussian of sigma ``alias_blur`` (cv2.GaussianBlur,
    reflect-101 borders). As in the package it is not renormalised after the smoothing: the
    disks of radius 8 and 10 touch the grid's border, whose reflection adds mass (sum 1.013 and
    1.011, so severities 4 and 5 also brighten by about 1 %)."""
    half = 8 if radius <= 8 else int(radius)
    grid = np.arange(-half, half + 1, dtype=np.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    offsets = np.arange(ksize) - (ksize - 1) / 2.0
    taps = np.exp(-(offsets**2) / (2.0 * alias_blur**2))
    taps /= taps.sum()
    return _filter2d(disk, np.outer(taps, taps), "reflect")


def _filter2d(channel, kernel, mode):
    """Correlation of a 2-D array with an odd-sized 2-D ``kernel`` (output the size of
    ``channel``; ``mode`` is the ``np.pad`` border: ``reflect`` = OpenCV's reflect-101,
    ``edge`` = replicate), via the FFT."""
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(channel, ((ry, ry), (rx, rx)), mode=mode)
    shape = padded.shape
    flipped = kernel[::-1, ::-1]
    full = np.fft.irfft2(np.fft.rfft2(padded, shape) * np.fft.rfft2(flipped, shape), shape)
    # circular convolution: rows/columns from 2r on are free of wrap-around
    return full[2 * ry:, 2 * rx:]


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A [size, size] diamond-square height map (toroidal) scaled to 0..1, as imagecorruptions'
    ``plasma_fractal``: the random amplitude starts at 100 (each perturbation is 100 * U(-100,
    100)) and is divided by ``decay`` after each level. ``size`` is a power of two. The number
    and order of the random draws do not depend on ``decay``."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"plasma_fractal size {size} must be a power of two")
    heights = np.zeros((size, size), np.float64)
    step, wibble = size, 100.0

    def perturbed(total):
        return total / 4.0 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = heights[0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        heights[half::step, half::step] = perturbed(square)
        centres = heights[half::step, half::step]
        corners = heights[0::step, 0::step]
        left_right = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        heights[0::step, half::step] = perturbed(left_right)
        up_down = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        heights[half::step, 0::step] = perturbed(up_down)
        step //= 2
        wibble /= decay
    heights -= heights.min()
    peak = heights.max()
    return heights / peak if peak > 0 else heights


def _fog(x, strength, decay, rng):
    """(x + strength * plasma) * max(x) / (max(x) + strength), the plasma map covering the
    image (side: the next power of two of the longest side)."""
    height, width = x.shape[:2]
    size = 1 << max(int(max(height, width, 3)) - 1, 0).bit_length()
    haze = strength * plasma_fractal(size, decay, rng)[:height, :width]
    peak = x.max()
    if x.ndim == 3:
        haze = haze[..., None]
    return (x + haze) * peak / (peak + strength)


# ----------------------------------------------------------------------------------- reports
def summarize(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Adds the averages to evaluated rows.

    Args:
      rows: ``{"<row>/clean": metrics, "<row>/<family>/s<severity>": metrics, ...}``, ``<row>``
        a model/resolution row of ``msad evaluate`` (``high``, ``low``, ``fused``...).
    Returns:
      ``rows`` plus ``<row>/<family>/mean`` (each metric averaged over the evaluated severities)
      and ``<row>/mPC`` (averaged over every evaluated family and severity), ordered per row:
      clean, each family's severities and mean, mPC.
    """
    ordered: dict[str, dict[str, list[str]]] = {}
    for label in rows:
        parts = label.rsplit("/", 2)
        if len(parts) == 3 and parts[2].startswith("s") and parts[1] in SEVERITY_CONSTANTS:
            ordered.setdefault(parts[0], {}).setdefault(parts[1], []).append(label)
        else:
            ordered.setdefault(label.removesuffix("/clean"), {}).setdefault("", []).append(label)
    out: dict[str, dict[str, float]] = {}
    for row, families in ordered.items():
        everything = []
        for family, labels in families.items():
            out.update({label: rows[label] for label in labels})
            if family:
                out[f"{row}/{family}/mean"] = _mean([rows[label] for label in labels])
                everything += [rows[label] for label in labels]
        if everything:
            out[f"{row}/mPC"] = _mean(everything)
    return out


def _mean(metrics_list):
    names = list(metrics_list[0])
    return {name: float(np.mean([m[name] for m in metrics_list])) for name in names}


def robustness_table(rows: dict[str, dict[str, float]], metric: str = "AP", title: str | None = None) -> str:
    """Plain-text COCO-C table of ``summarize``'d rows: one block per model/resolution row,
    one line per family with ``metric`` clean, at each severity, the mean over severities and
    rPC = mean / clean (%), and a last line mPC (mean over families and severities) / rPC."""
    blocks = []
    row_names = [label.removesuffix("/mPC") for label in rows if label.endswith("/mPC")]
    for row in row_names:
        severities = sorted({int(parsed[2]) for parsed in map(_parse_label, rows)
                             if parsed and parsed[0] == row and parsed[2].isdigit() and parsed[2] != "0"})
        clean = rows.get(f"{row}/clean", {}).get(metric, float("nan"))
        header = f"{row + ' ' + metric:<18}  {'clean':>6}  " + "  ".join(f"{'s' + str(s):>6}" for s in severities)
        header += f"  {'mean':>6}  {'rPC%':>6}"
        lines = [header, "-" * len(header)]
        families = [f for f in FAMILIES if f"{row}/{f}/mean" in rows]
        for family in families:
            values = [rows.get(f"{row}/{family}/s{s}", {}).get(metric, float("nan")) for s in severities]
            mean = rows[f"{row}/{family}/mean"][metric]
            lines.append(
                f"{family:<18}  {clean:6.2f}  " + "  ".join(f"{v:6.2f}" for v in values)
                + f"  {mean:6.2f}  {_ratio(mean, clean):6.1f}"
            )
        mpc = rows[f"{row}/mPC"][metric]
        pad = " " * (8 * len(severities))
        lines.append(f"{'mPC':<18}  {clean:6.2f}  {pad}{mpc:6.2f}  {_ratio(mpc, clean):6.1f}")
        blocks.append("\n".join(lines))
    return "\n".join(([title] if title else []) + ["\n\n".join(blocks)])


def _parse_label(label):
    """(row, family, severity) of a ``summarize``'d row label: severity "0" for ``clean``,
    "1".."5" or "mean" for a family, "mean" for ``mPC``."""
    if label.endswith("/clean"):
        return label.removesuffix("/clean"), "clean", "0"
    if label.endswith("/mPC"):
        return label.removesuffix("/mPC"), "mPC", "mean"
    parts = label.rsplit("/", 2)
    if len(parts) != 3:
        return None
    row, family, severity = parts
    return row, family, severity.removeprefix("s")


def _ratio(value, clean):
    return 100.0 * value / clean if clean and np.isfinite(clean) else float("nan")


def write_csv(path, rows: dict[str, dict[str, float]]) -> None:
    """One CSV line per ``summarize``'d row: row, family (clean / a family / mPC), severity
    (0, 1..5 or mean), the COCO metrics and rPC (AP / clean AP, %)."""
    import csv
    from pathlib import Path

    from msad_tf.evaluation.coco_eval import METRIC_NAMES

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "family", "severity", *METRIC_NAMES, "rPC"])
        for label, metrics in rows.items():
            row, family, severity = _parse_label(label)
            clean = rows.get(f"{row}/clean", {}).get("AP")
            writer.writerow([row, family, severity, *(f"{metrics[m]:.4f}" for m in METRIC_NAMES),
                             f"{_ratio(metrics['AP'], clean):.2f}" if clean is not None else ""])
