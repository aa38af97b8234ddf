"""SavedModel export for TF Serving: preprocessing, network, box decoding and NMS in one graph.

Layout written by ``export_saved_model`` (TF Serving's ``MODEL_BASE_PATH/NAME/VERSION``)::

    OUT/NAME/1/
      saved_model.pb        signatures serving_default (uint8 images) and image_bytes
      variables/
      assets/
      msad_export.json      resolution, resize target, subsample, input_norm, shift, padding,
                            category ids/names, source run

Both signatures return the TF Object Detection API outputs (D = model max_detections):
  detection_boxes    float32 [B, D, 4] [ymin, xmin, ymax, xmax] normalised to the input image
  detection_scores   float32 [B, D]
  detection_classes  float32 [B, D] dataset category ids (float, as the OD API); 0 past
                     num_detections
  num_detections     float32 [B] (float, as the OD API)
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import tensorflow as tf

from msad_tf.data.preprocess import (
    network_input,
    normalize_image,
    pad_to_multiple,
    resize_image,
    resolve_input_norm,
)
from msad_tf.resolution import RESOLUTIONS, deploy_resolution, input_geometry

EXPORT_INFO_FILE = "msad_export.json"
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
_PREPARED = (tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int32))
"""Signature of one image after ``_prepare``: padded normalised image, resized (h, w)."""


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """How an exported model sees its input.

    Attributes:
      resolution: ``high`` (H) or ``low`` (L = H / k).
      short_side, max_side: resize target of the original image (Detectron2
        ResizeShortestEdge semantics): H for ``subsample`` > 1.
      shift: pyramid shift the model reads (0: P3..P7; m: the aligned levels P(3-m)'..P(7-m)').
      pad_multiple: the network input is zero padded (after normalisation) to a multiple of this.
      subsample: s of the strided subsample x[:, ::s, ::s] the network reads of the normalised,
        padded resized image (``network_input``): k at L with ``eval.low_input`` subsample, else 1.
      input_norm: ``normalize_image`` mode (``imagenet_std`` or ``caffe``).
    """

    resolution: str
    short_side: int
    max_side: int
    shift: int
    pad_multiple: int
    subsample: int = 1
    input_norm: str = "imagenet_std"

    def as_dict(self) -> dict:
        """The fields by name (the spec of ``msad_export.json`` and of the benchmark reports)."""
        return dataclasses.asdict(self)

    @property
    def input_multiple(self) -> int:
        """The resized image is padded to a multiple of this before the subsample, so that the
        network input is a multiple of ``pad_multiple``."""
        return self.pad_multiple * self.subsample

    @property
    def canvas_side(self) -> int:
        """Smallest padded side that holds any resized image: ceil(max_side / m) * m with
        m = ``input_multiple``."""
        return -(-self.max_side // self.input_multiple) * self.input_multiple


def export_spec(model, config, resolution: str | None = None, pad_multiple: int | None = None) -> ExportSpec:
    """ExportSpec of ``model`` at ``resolution`` (default: ``deploy_resolution``).

    The default padding reproduces the geometry the read levels saw in training: the high-res
    batch is padded to ``data.pad_multiple`` and the shifted levels read its stride-2^m
    subsample, so a model reading shift m gets ``pad_multiple / 2^m`` (a multiple of the
    coarsest stride it reads). ``msad evaluate`` pads every resolution to ``data.pad_multiple``;
    pass ``pad_multiple`` to reproduce that exactly. With ``eval.low_input`` subsample the
    default padding is exactly that of ``msad evaluate`` at L (the subsample of the batch padded
    to ``data.pad_multiple``). The resize target, subsample and normalisation are those of
    ``input_geometry`` and ``resolve_input_norm``.
    """
    resolution = resolution or deploy_resolution(model, config)
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution '{resolution}': choose high or low")
    short_side, max_side, subsample = input_geometry(config, resolution)
    shift = int(model.shift_for(resolution))
    coarsest = 2 ** (model.pyramid.max_level - shift)
    if pad_multiple is None:
        pad_multiple = max(config.data.pad_multiple // 2**shift, coarsest)
    pad_multiple = int(pad_multiple)
    if pad_multiple < 1 or pad_multiple % coarsest:
        raise ValueError(
            f"pad_multiple {pad_multiple} must be a multiple of the coarsest stride read at shift "
            f"{shift}, {coarsest}"
        )
    return ExportSpec(resolution, int(short_side), int(max_side), shift, pad_multiple,
                      int(subsample), resolve_input_norm(config.model))


def _input_error(message: str) -> str:
    return f"msad serving input error: {message}"


def _checked_input(tensor, shape, name: str, layout: str):
    """Run-time checks of a signature input against ``shape`` (None = any size; the batch axis
    must not be empty), with messages that name the input and give its shape.

    A loaded signature checks dtypes but not shapes, and graph optimisation would fold checks
    on a statically shaped tensor away, so the checks read the shape of an unshaped view.
    """
    view = tf.raw_ops.PlaceholderWithDefault(input=tensor, shape=tf.TensorShape(None))
    shape_of = tf.shape(view)
    rank = len(shape)
    rank_ok = tf.equal(tf.size(shape_of), rank)
    rank_check = tf.debugging.Assert(
        rank_ok,
        [_input_error(f"{name} must be {layout} (rank {rank}); got shape"), shape_of],
        summarize=8,
    )
    with tf.control_dependencies([rank_check]):
        dims = tf.concat([shape_of, tf.ones([rank], tf.int32)], 0)[:rank]
    fixed = [(axis, size) for axis, size in enumerate(shape) if size is not None]
    sizes_ok = tf.reduce_all([tf.equal(dims[axis], size) for axis, size in fixed]) if fixed else True
    checks = [
        tf.debugging.Assert(
            sizes_ok, [_input_error(f"{name} must be {layout}; got shape"), shape_of], summarize=8
        ),
        tf.debugging.Assert(
            dims[0] > 0,
            [_input_error(f"{name} holds no image (batch size 0); got shape"), shape_of],
            summarize=8,
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.ensure_shape(tf.identity(view), shape)


class DetectionModule(tf.Module):
    """Serving module: encoded or uint8 images in, OD API detections out.

    Preprocessing is the input pipeline's (``msad_tf.data.pipeline.prepare_image`` at
    evaluation): resize with ``resize_image`` to the spec's short/max side, normalise with
    ``spec.input_norm``, zero pad the batch to the largest resized image, then to a multiple of
    ``spec.input_multiple``, and read its subsample ``network_input(..., spec.subsample)``, as
    ``predict_coco`` does. Boxes come back normalised by the resized image's size.

    Args:
      model: a Detector (or fusion teacher) with ``detect(images, image_sizes, shift)``.
      spec: ExportSpec (resolution, resize target, shift, padding).
      category_ids: dataset category id of each contiguous class.
    """

    def __init__(self, model, spec: ExportSpec, category_ids, name: str = "msad_detector"):
        super().__init__(name=name)
        self._state = Untracked(model=model, spec=spec, category_ids=[int(i) for i in category_ids])
        self.serving_default = tf.function(
            self._serve_images,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
            autograph=False,
        )
        self.image_bytes = tf.function(
            self._serve_image_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
            autograph=False,
        )

    @property
    def model(self):
        return self._state.model

    @property
    def spec(self) -> ExportSpec:
        return self._state.spec

    def signatures(self) -> dict:
        """Concrete functions keyed by signature name; also tracks the variables they capture."""
        functions = {
            "serving_default": self.serving_default.get_concrete_function(),
            "image_bytes": self.image_bytes.get_concrete_function(),
        }
        seen, variables = set(), []
        for function in functions.values():
            for variable in function.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    variables.append(variable)
        self.captured_variables = variables
        return functions

    def _serve_images(self, images):
        """images uint8 [B, H, W, 3], one size for the whole batch -> OD API dict."""
        images = _checked_input(images, [None, None, None, 3], "images", "[batch, height, width, 3]")
        canvases, sizes = tf.map_fn(self._prepare, images, fn_output_signature=_PREPARED)
        return self._detect_prepared(canvases, sizes)

    def _serve_image_bytes(self, image_bytes):
        """image_bytes string [B] (JPEG, PNG, GIF, BMP or WebP; sizes may differ) -> OD API dict."""
        image_bytes = _checked_input(image_bytes, [None], "image_bytes", "[batch]")

        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return self._prepare(tf.ensure_shape(image, [None, None, 3]))

        canvases, sizes = tf.map_fn(decode, image_bytes, fn_output_signature=_PREPARED)
        return self._detect_prepared(canvases, sizes)

    def _prepare(self, image):
        """uint8 [H, W, 3] -> (normalised image zero padded to [max_side, max_side, 3],
        int32 [2] resized (h, w))."""
        spec = self.spec
        shape = tf.shape(image)
        check = tf.debugging.Assert(
            tf.reduce_all(shape[:2] > 0),
            [_input_error("image height and width must be > 0; got image shape"), shape],
            summarize=8,
        )
        with tf.control_dependencies([check]):
            resized, _ = resize_image(image, spec.short_side, spec.max_side)
        size = tf.shape(resized)[:2]
        canvas = tf.pad(
            normalize_image(resized, spec.input_norm),
            [[0, spec.max_side - size[0]], [0, spec.max_side - size[1]], [0, 0]],
        )
        return canvas, size

    def _detect_prepared(self, canvases, sizes):
        """canvases float32 [B, max_side, max_side, 3], sizes int32 [B, 2] -> OD API dict."""
        spec = self.spec
        extent = tf.reduce_max(sizes, axis=0)
        batch = pad_to_multiple(canvases[:, : extent[0], : extent[1], :], spec.input_multiple)
        detections = self.model.detect(*network_input(batch, sizes, spec.subsample), spec.shift)
        return detections_to_od_api(detections, sizes, self._state.category_ids, spec.subsample)


class Untracked:
    """Attributes out of reach of tf.Module tracking: the Keras model is saved through the
    variables its traced functions capture, not as an object (its layers hold int-keyed dicts
    that SavedModel cannot serialise)."""

    def __init__(self, **values):
        self.__dict__.update(values)


def detections_to_od_api(detections, image_sizes, category_ids, subsample: int = 1):
    """Library detections -> TF Object Detection API outputs.

    Args:
      detections: dict from ``Detector.detect``: boxes [B, D, 4] in pixels of the network
        input (the resized image subsampled by ``subsample``), scores [B, D], classes [B, D]
        int32 contiguous, num_detections [B] int32.
      image_sizes: int32 [B, 2] resized (h, w) the boxes are normalised by.
      category_ids: dataset category id of each contiguous class.
      subsample: s of ``network_input``: boxes * s are in pixels of the resized image.
    Returns:
      dict detection_boxes float32 [B, D, 4] in [0, 1], detection_scores float32 [B, D],
      detection_classes float32 [B, D] category ids (0 past num_detections),
      num_detections float32 [B].
    """
    sizes = tf.cast(image_sizes, tf.float32)
    scale = tf.concat([sizes, sizes], axis=-1)[:, None, :]
    num = detections["num_detections"]
    valid = tf.range(tf.shape(detections["scores"])[1])[None, :] < num[:, None]
    ids = tf.gather(tf.constant(category_ids, tf.float32), detections["classes"])
    return {
        "detection_boxes": detections["boxes"] * float(subsample) / scale,
        "detection_scores": detections["scores"],
        "detection_classes": tf.where(valid, ids, 0.0),
        "num_detections": tf.cast(num, tf.float32),
    }


def export_info(spec: ExportSpec, category_ids, category_names, source_run=None, **extra) -> dict:
    """The ``msad_export.json`` record of an export."""
    info = {
        **spec.as_dict(),
        "low_input": ("subsample" if spec.subsample > 1 else "resize") if spec.resolution == "low" else None,
        "category_ids": [int(i) for i in category_ids],
        "category_names": list(category_names),
        "source_run": str(Path(source_run).resolve()) if source_run else None,
        "tensorflow": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    info.update(extra)
    return info


def export_saved_model(model, export_dir, spec: ExportSpec, category_ids, category_names,
                       source_run=None) -> Path:
    """Writes the SavedModel and its ``msad_export.json`` into ``export_dir``; returns it."""
    export_dir = Path(export_dir)
    module = DetectionModule(model, spec, category_ids)
    signatures = module.signatures()
    tf.saved_model.save(module, str(export_dir), signatures=signatures)
    info = export_info(
        spec, category_ids, category_names, source_run,
        format="saved_model",
        signatures={
            "serving_default": {"inputs": {"images": "uint8 [batch, height, width, 3]"}},
            "image_bytes": {"inputs": {"image_bytes": "string [batch] (JPEG/PNG/GIF/BMP)"}},
        },
        outputs={
            "detection_boxes": "float32 [batch, D, 4] normalised [ymin, xmin, ymax, xmax]",
            "detection_scores": "float32 [batch, D]",
            "detection_classes": "float32 [batch, D] dataset category ids, 0 past num_detections",
            "num_detections": "float32 [batch]",
        },
        max_detections=int(model.postprocess_config.max_detections),
    )
    (export_dir / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2))
    return export_dir


def export_run_saved_model(run_dir, out="saved_models", name: str | None = None, version: int = 1,
                           resolution: str | None = None, pad_multiple: int | None = None) -> Path:
    """Exports a run's model to ``OUT/NAME/VERSION`` (NAME defaults to the run directory's name).

    Returns the version directory.
    """
    from msad_tf.training.runs import load_run

    config, model, ids, names = load_run(run_dir)
    spec = export_spec(model, config, resolution, pad_multiple)
    name = name or Path(run_dir).resolve().name
    export_dir = Path(out) / name / str(int(version))
    if export_dir.exists() and any(export_dir.iterdir()):
        raise FileExistsError(f"{export_dir} exists and is not empty: choose another --version or --out")
    return export_saved_model(model, export_dir, spec, ids, names, source_run=run_dir)


def read_export_info(path) -> dict:
    """``msad_export.json`` of an export directory (or of a ``.tflite`` file's sidecar)."""
    path = Path(path)
    info_path = path / EXPORT_INFO_FILE if path.is_dir() else path.with_suffix(".json")
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} missing: is {path} an msad export?")
    return json.loads(info_path.read_text())


def directory_size(path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def original_pixel_boxes(normalized_boxes, height, width, spec: ExportSpec):
    """Normalised boxes of an image [..., 4] -> [ymin, xmin, ymax, xmax] in its original pixels,
    inverting the export's resize exactly (the boxes were normalised by the rounded resized
    size, the resize scaled by ``resize_scale``)."""
    from msad_tf.data.preprocess import resize_scale, resized_size

    scale = resize_scale(height, width, spec.short_side, spec.max_side)
    size = tf.cast(resized_size(height, width, scale), tf.float32)
    pixels = tf.cast(normalized_boxes, tf.float32) * tf.concat([size, size], 0)
    return (pixels / scale).numpy()


__all__ = [
    "DetectionModule",
    "EXPORT_INFO_FILE",
    "Untracked",
    "ExportSpec",
    "OUTPUT_KEYS",
    "deploy_resolution",
    "detections_to_od_api",
    "directory_size",
    "export_info",
    "export_run_saved_model",
    "export_saved_model",
    "export_spec",
    "original_pixel_boxes",
    "read_export_info",
]
