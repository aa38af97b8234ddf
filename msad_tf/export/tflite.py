"""TFLite export: fixed-size input, network + box decoding + NMS, TFLite builtin ops only.

The model takes an image the caller has already resized (TFLite graphs have fixed shapes, and
the antialiased resize of training is not a TFLite builtin):

  images      uint8 [1, H, W, 3]  RGB 0..255; the resized image (``resize_image`` semantics:
                                  short side ``short_side``, long side at most ``max_side``)
                                  in the top-left corner, anything in the rest
  image_size  int32 [2]           (h, w) of the resized image inside ``images``

H, W default to the canvas side ceil(max_side / m) * m (m = ``ExportSpec.input_multiple``),
which holds any resized image. Inside: normalise (``spec.input_norm``), zero the area outside
``image_size`` (the zero padding of training, after normalisation), take the strided subsample
x[:, ::s, ::s] (s = ``spec.subsample``: k at L with ``eval.low_input`` subsample; a STRIDED_SLICE),
network, decode, per-class NMS (NON_MAX_SUPPRESSION_V5) and the OD API outputs of the
SavedModel with batch 1 (boxes normalised by ``image_size``).
``prepare_input`` does the caller's part in Python; ``TFLiteDetector`` runs a file.

Quantization: ``none`` (float32), ``fp16`` (float16 weights), ``dynamic`` (int8 weights,
dynamic-range activations), ``int8`` (int8 weights and activations calibrated on training
images; the post-processing stays float). The ``raw`` variant stops after the head and returns
its outputs with levels concatenated, row-major per level (FCOS: cls_logits [1, N, C],
box_reg [1, N, 4], centerness [1, N]; RetinaNet: cls_logits [1, N, A * C], box_reg [1, N, A * 4]),
for parity checks of the network alone. Decoding is the model's own ``image_candidates``.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from msad_tf.data.preprocess import network_input, normalize_image, resize_image
from msad_tf.export import QUANTIZATIONS
from msad_tf.export.saved_model import (
    ExportSpec,
    Untracked,
    export_info,
    export_spec,
    read_export_info,
)
from msad_tf.modeling.postprocess import image_candidates
from msad_tf.native_logs import native_output_held
from msad_tf.resolution import is_multi_branch, resolve_branch

#: The raw outputs of an FCOS model (other detectors: their head's output keys).
RAW_OUTPUT_KEYS = ("cls_logits", "box_reg", "centerness")
FLOAT_SCOPE = "msad_float_postprocess"


def head_outputs_at(model, images, shift: int, lite_head: bool = False):
    """Head outputs per level of the branch ``model.detect`` runs at ``shift`` (the fused branch
    of a MultiScaleTeacher at shift 0); ``lite_head``: through ``lite_head_outputs``."""
    features = None
    if is_multi_branch(model):
        branch, shift = resolve_branch(model, None, shift)
        if branch == "fused":
            features = model.fused_features(images)
    if features is None:
        features = model.pyramid_features(images, shift)
    return lite_head_outputs(model.head, features) if lite_head else model.head_outputs(features)


def _tower_blocks(tower):
    """A tower's layers as [(Conv2D, GroupNormalization)] blocks (each followed by a ReLU), or
    None when the tower is not made of such blocks."""
    import keras

    blocks = []
    for i in range(0, len(tower), 3):
        conv, norm, relu = (list(tower[i : i + 3]) + [None, None])[:3]
        if not (
            isinstance(conv, keras.layers.Conv2D) and conv.kernel_size == (3, 3)
            and conv.strides == (1, 1) and conv.dilation_rate == (1, 1) and conv.groups == 1
            and conv.padding == "same" and conv.use_bias
            and conv.activation is keras.activations.linear
            and isinstance(norm, keras.layers.GroupNormalization) and norm.axis in (-1, 3)
            and norm.scale and norm.center
            and isinstance(relu, keras.layers.ReLU) and relu.max_value is None
            and not relu.negative_slope and not relu.threshold
        ):
            return None
        blocks.append((conv, norm))
    return blocks


def _conv_same(x, convs):
    """The 3x3 'same' convolutions ``convs`` (Keras Conv2D layers reading the same input) as one
    conv whose output channels are theirs, concatenated."""
    kernel = tf.concat([tf.cast(c.kernel, tf.float32) for c in convs], -1)
    bias = tf.concat([tf.cast(c.bias, tf.float32) for c in convs], -1)
    return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), bias)


def _group_norm(x, norms):
    """GroupNormalization of ``x`` [1, h, w, C] whose channels are those of the layers ``norms``
    concatenated (each with its own groups), in 4-D ops: per-channel moments over space, then
    the group average as a [C, C] matmul. Equal to the Keras layers to float rounding."""
    channels = x.shape[-1]
    matrix = np.zeros((channels, channels), np.float32)
    start = 0
    for norm in norms:
        size = int(norm.gamma.shape[0]) // norm.groups
        for _ in range(norm.groups):
            matrix[start : start + size, start : start + size] = 1.0 / size
            start += size
    if start != channels:
        raise ValueError(f"GroupNormalization layers cover {start} channels, the input has {channels}")
    matrix = tf.constant(matrix)

    def group_average(moment):
        return tf.reshape(tf.matmul(tf.reshape(moment, [-1, channels]), matrix), [-1, 1, 1, channels])

    gamma = tf.concat([tf.cast(n.gamma, tf.float32) for n in norms], 0)
    beta = tf.concat([tf.cast(n.beta, tf.float32) for n in norms], 0)
    centered = x - group_average(tf.reduce_mean(x, [1, 2], keepdims=True))
    variance = group_average(tf.reduce_mean(tf.square(centered), [1, 2], keepdims=True))
    return centered * (tf.math.rsqrt(variance + norms[0].epsilon) * gamma) + beta


def lite_head_outputs(head, features):
    """``FCOSHead`` (or ``RetinaNetHead``) outputs (same weights, same math, equal to float
    rounding) in fewer and cheaper TFLite ops, for batch-1 graphs.

    The head is a fixed cost: the aligned low-res levels P(3-m)'..P(7-m)' have as many cells
    as P3..P7 at high resolution, so at L it is about half of the network FLOPs and, as Keras
    writes it, slower per FLOP than the backbone (35 convs and 20 GroupNorms of 5-D reshapes
    and reductions for 2-conv towers). Here: the first convs of the two towers, which read the
    same input, run as one conv (and their GroupNorms as one); box_pred and centerness, which
    read the same tower, as one conv; GroupNorm in 4-D ops (``_group_norm``). A head without
    centerness (RetinaNet) ends in its cls_logits and box_pred convs. Falls back to
    ``head(features)`` for a head not made of conv/GroupNorm/ReLU blocks or for batch > 1.
    """
    cls_blocks, box_blocks = _tower_blocks(head.cls_tower), _tower_blocks(head.box_tower)
    if (
        cls_blocks is None or box_blocks is None or len(cls_blocks) != len(box_blocks)
        or any(f.shape[0] != 1 for f in features)
    ):
        return head(features)
    outputs = []
    for i, feature in enumerate(features):
        feature = tf.cast(feature, tf.float32)
        cls = box = feature
        blocks = list(zip(cls_blocks, box_blocks))
        if blocks:
            (cls_conv, cls_norm), (box_conv, box_norm) = blocks.pop(0)
            both = tf.nn.relu(_group_norm(_conv_same(feature, [cls_conv, box_conv]), [cls_norm, box_norm]))
            cls, box = tf.split(both, [cls_conv.filters, box_conv.filters], axis=-1)
        for (cls_conv, cls_norm), (box_conv, box_norm) in blocks:
            cls = tf.nn.relu(_group_norm(_conv_same(cls, [cls_conv]), [cls_norm]))
            box = tf.nn.relu(_group_norm(_conv_same(box, [box_conv]), [box_norm]))
        if not hasattr(head, "centerness"):
            outputs.append(
                {"cls_logits": _conv_same(cls, [head.cls_logits]), "box_reg": _conv_same(box, [head.box_pred])}
            )
            continue
        box_and_centerness = _conv_same(box, [head.box_pred, head.centerness])
        outputs.append(
            {
                "cls_logits": _conv_same(cls, [head.cls_logits]),
                "box_reg": tf.nn.relu(tf.cast(head.scales[i], tf.float32) * box_and_centerness[..., :4]),
                "centerness": box_and_centerness[..., 4],
            }
        )
    return outputs


def postprocess_single(level_outputs, strides, image_size, config, candidates=None):
    """``msad_tf.modeling.postprocess.postprocess`` for one image, in a form TFLite runs right.

    Three differences, all for TFLite: no tf.map_fn (the converter's int8 calibration crashes
    on the WHILE loop it becomes); NMS with padded outputs plus a valid count (TFLite's
    NON_MAX_SUPPRESSION_V5 always returns max_output_size indices, so the unpadded form's
    ``tf.shape(selected)[0]`` would count padding as detections); and boxes left with zero area
    by the clipping (locations in the padding) are dropped before NMS: TFLite's NMS never
    suppresses a zero-area box, not even against itself, and returns it max_output_size times.
    Such a box overlaps nothing, so the other detections are those of ``postprocess``.

    Args:
      level_outputs: per level dicts cls_logits [h, w, C], box_reg [h, w, 4], centerness [h, w].
      strides: stride of each level.
      image_size: float32 [2] (h, w) of the valid image area.
      config: PostprocessConfig.
      candidates: (level_outputs, strides, image_size) -> ``image_candidates`` result, the
        model's ``image_candidates``; default FCOS's with ``config``.
    Returns:
      boxes [D, 4] pixels, scores [D], classes [D] int32 (zero past num_detections),
      num_detections int32 scalar.
    """
    if candidates is None:
        boxes, scores, classes, nms_boxes = image_candidates(level_outputs, strides, image_size, config)
    else:
        boxes, scores, classes, nms_boxes = candidates(level_outputs, strides, image_size)
    selected, _, num = tf.raw_ops.NonMaxSuppressionV5(
        boxes=nms_boxes,
        scores=scores,
        max_output_size=config.max_detections,
        iou_threshold=config.nms_iou,
        score_threshold=1e-6,
        soft_nms_sigma=0.0,
        pad_to_max_output_size=True,
    )
    valid = tf.range(config.max_detections) < num
    return (
        tf.where(valid[:, None], tf.gather(boxes, selected), 0.0),
        tf.where(valid, tf.gather(scores, selected), 0.0),
        tf.where(valid, tf.gather(classes, selected), 0),
        num,
    )


class TFLiteDetectionModule(tf.Module):
    """Batch-1, fixed-size detection graph for the TFLite converter.

    Args:
      model: a Detector (or fusion teacher).
      spec: ExportSpec; ``spec.shift`` chooses the levels read.
      category_ids: dataset category id of each contiguous class.
      input_size: (H, W) of the input canvas, multiples of ``spec.input_multiple``; default the
        square ``spec.canvas_side``.
    """

    def __init__(self, model, spec: ExportSpec, category_ids, input_size=None):
        super().__init__(name="msad_tflite_detector")
        side = spec.canvas_side
        height, width = (side, side) if input_size is None else (int(s) for s in input_size)
        if height % spec.input_multiple or width % spec.input_multiple:
            raise ValueError(
                f"TFLite input size {height}x{width} must be a multiple of pad_multiple "
                f"{spec.pad_multiple} times subsample {spec.subsample}"
            )
        self.input_size = (height, width)
        self._state = Untracked(model=model, spec=spec, category_ids=[int(i) for i in category_ids])
        signature = [
            tf.TensorSpec([1, height, width, 3], tf.uint8, name="images"),
            tf.TensorSpec([2], tf.int32, name="image_size"),
        ]
        self.detect = tf.function(self._detect, input_signature=signature, autograph=False)
        self.raw = tf.function(self._raw, input_signature=signature, autograph=False)

    def concrete_function(self, raw: bool = False):
        """The concrete function to convert; tracks the variables it captures so the converter
        freezes them into the flatbuffer."""
        function = (self.raw if raw else self.detect).get_concrete_function()
        self.captured_variables = list(function.variables)
        return function

    def normalized_input(self, images, image_size):
        """uint8 [1, H, W, 3], int32 [2] -> (float32 [1, H, W, 3] normalised with zeros outside
        the image, image_size int32 [2] clipped to [1, (H, W)])."""
        height, width = self.input_size
        image_size = tf.clip_by_value(image_size, 1, tf.constant([height, width]))
        rows = tf.range(height)[:, None] < image_size[0]
        cols = tf.range(width)[None, :] < image_size[1]
        mask = tf.logical_and(rows, cols)[None, :, :, None]
        return tf.where(mask, normalize_image(images, self._state.spec.input_norm), 0.0), image_size

    def _outputs(self, images, image_size):
        """-> (head outputs per level, image_size int32 [2] clipped, network image size int32
        [2]: ceil(image_size / subsample))."""
        state = self._state
        normalized, image_size = self.normalized_input(images, image_size)
        network, network_size = network_input(normalized, image_size, state.spec.subsample)
        outputs = head_outputs_at(state.model, network, state.spec.shift, lite_head=True)
        return outputs, image_size, network_size

    def _detect(self, images, image_size):
        """-> detection_boxes [1, D, 4] normalised by image_size, detection_scores [1, D],
        detection_classes [1, D] float32 category ids (0 past num_detections),
        num_detections float32 [1]."""
        state = self._state
        outputs, image_size, network_size = self._outputs(images, image_size)
        with tf.name_scope(FLOAT_SCOPE):
            size = tf.cast(image_size, tf.float32)
            boxes, scores, classes, num = postprocess_single(
                [{key: value[0] for key, value in level.items()} for level in outputs],
                state.model.pyramid.strides(state.spec.shift),
                tf.cast(network_size, tf.float32),
                state.model.postprocess_config,
                state.model.image_candidates,
            )
            boxes = boxes * float(state.spec.subsample)
            valid = tf.range(tf.shape(scores)[0]) < num
            ids = tf.gather(tf.constant(state.category_ids, tf.float32), classes)
            return {
                "detection_boxes": (boxes / tf.concat([size, size], 0))[None],
                "detection_scores": scores[None],
                "detection_classes": tf.where(valid, ids, 0.0)[None],
                "num_detections": tf.cast(num, tf.float32)[None],
            }

    def _raw(self, images, image_size):
        """-> the head's outputs, levels concatenated (``flatten_head_outputs``)."""
        outputs, _, _ = self._outputs(images, image_size)
        return flatten_head_outputs(outputs)


def flatten_head_outputs(level_outputs):
    """Per-level head outputs [B, h, w, ...] -> dict of [B, N, ...] (FCOS: cls_logits
    [B, N, C], box_reg [B, N, 4], centerness [B, N]), levels concatenated in order, each level
    row-major."""
    batch = tf.shape(level_outputs[0]["cls_logits"])[0]
    return {
        key: tf.concat(
            [tf.reshape(o[key], [batch, -1] + list(o[key].shape[3:])) for o in level_outputs], 1
        )
        for key in level_outputs[0]
    }


# --------------------------------------------------------------------------------- conversion
def convert(module: TFLiteDetectionModule, quantize: str = "none", representative_data=None,
            raw: bool = False) -> bytes:
    """TFLite flatbuffer of ``module`` (builtin ops only).

    Args:
      quantize: one of ``QUANTIZATIONS``.
      representative_data: for ``int8``: a callable returning an iterable of input dicts
        {"images": uint8 [1, H, W, 3], "image_size": int32 [2]}.
      raw: convert the raw head-outputs function instead of the detection function.
    Raises:
      ValueError: unknown quantization, missing representative data, or a converted model
        that needs ops outside the TFLite builtins.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize '{quantize}': choose one of {', '.join(QUANTIZATIONS)}")
    function = module.concrete_function(raw)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative_data is None:
            raise ValueError("int8 quantization needs representative data (training images)")
        converter.representative_dataset = representative_data
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        with native_output_held():
            model = _quantize_int8(converter) if quantize == "int8" else converter.convert()
    custom = sorted(op for op in tflite_ops(model) if op.startswith("CUSTOM:"))
    if custom:
        raise ValueError(f"the converted model needs non-builtin ops: {', '.join(custom)}")
    return model


def _quantize_int8(converter) -> bytes:
    """Full-integer quantization of the network with the post-processing kept float: int8
    decoded boxes would move by canvas/255 pixels, and the class offset that makes NMS
    class-aware spans C times the image size, far beyond int8 resolution.

    Selective quantization through the public QuantizationDebugger: calibrate, then quantize
    with the post-processing (ops under the name scope ``FLOAT_SCOPE``, the model outputs, and
    the op types only the post-processing uses) deny-listed.
    """
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset
    )
    nodes, op_types = _postprocess_denylist(debugger.calibrated_model)
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=nodes, denylisted_ops=op_types
    )
    return debugger.get_nondebug_quantized_model()


def _postprocess_denylist(model) -> tuple[list[str], list[str]]:
    """(tensor names, op type names) of a float flatbuffer's post-processing: the outputs of
    ops under ``FLOAT_SCOPE`` plus the model outputs, and the op types used only there."""
    schema = _schema()
    root = schema.Model.GetRootAs(model, 0)
    subgraph = root.Subgraphs(0)
    type_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def name(index):
        return subgraph.Tensors(index).Name().decode()

    nodes = {name(subgraph.Outputs(i)) for i in range(subgraph.OutputsLength())}
    inside, outside = set(), set()
    for o in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(o)
        code = root.OperatorCodes(op.OpcodeIndex())
        op_type = type_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        outputs = [name(op.Outputs(i)) for i in range(op.OutputsLength())]
        if any(FLOAT_SCOPE in output for output in outputs):
            nodes.update(outputs)
            inside.add(op_type)
        else:
            outside.add(op_type)
    return sorted(nodes), sorted(t for t in inside - outside if t)


def tflite_tensor_names(model) -> list[str]:
    """Names of the tensors of a TFLite flatbuffer's main subgraph."""
    subgraph = _schema().Model.GetRootAs(model, 0).Subgraphs(0)
    return [subgraph.Tensors(i).Name().decode() for i in range(subgraph.TensorsLength())]


def tflite_tensor_types(model) -> dict[str, str]:
    """Tensor name -> element type name (FLOAT32, INT8, ...) of a flatbuffer's main subgraph."""
    if not isinstance(model, (bytes, bytearray)):
        model = Path(model).read_bytes()
    schema = _schema()
    types = {value: key for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    subgraph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    return {
        subgraph.Tensors(i).Name().decode(): types[subgraph.Tensors(i).Type()]
        for i in range(subgraph.TensorsLength())
    }


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def tflite_ops(model) -> dict[str, int]:
    """Operator counts of a TFLite flatbuffer (bytes or path), read from its operator codes
    over all subgraphs: builtin names (e.g. ``NON_MAX_SUPPRESSION_V5``) or ``CUSTOM:<name>``
    (Flex ops appear as ``CUSTOM:Flex...``)."""
    if not isinstance(model, (bytes, bytearray)):
        model = Path(model).read_bytes()
    schema = _schema()
    names = {
        value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")
    }
    root = schema.Model.GetRootAs(model, 0)
    codes = []
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            codes.append("CUSTOM:" + (code.CustomCode() or b"").decode())
        else:
            codes.append(names.get(builtin, f"BUILTIN_{builtin}"))
    counts: dict[str, int] = {}
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            name = codes[subgraph.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------------- inputs
def prepare_input(image, spec: ExportSpec, input_size):
    """The caller's side of the TFLite model for one image.

    Args:
      image: uint8 [H, W, 3] RGB.
      spec: the export's ExportSpec (resize target; the model normalises and subsamples).
      input_size: (H_in, W_in) of the model input.
    Returns:
      (images uint8 [1, H_in, W_in, 3] with the resized image top-left and zeros elsewhere,
      image_size int32 [2], scale float: resized = original * scale).
    """
    resized, scale = resize_image(tf.convert_to_tensor(image), spec.short_side, spec.max_side)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8).numpy()
    h, w = resized.shape[:2]
    if h > input_size[0] or w > input_size[1]:
        raise ValueError(
            f"resized image {h}x{w} does not fit the TFLite input {input_size[0]}x{input_size[1]}"
        )
    canvas = np.zeros((1, input_size[0], input_size[1], 3), np.uint8)
    canvas[0, :h, :w] = resized
    return canvas, np.array([h, w], np.int32), float(scale)


def representative_dataset(config, spec: ExportSpec, input_size, num_images: int = 100,
                           split: str | None = None, seed: int = 0):
    """Callable for ``converter.representative_dataset``: ``num_images`` images of the run's
    training split (a seeded sample), prepared as the TFLite model's inputs."""
    from msad_tf.training.train import load_split

    dataset = load_split(config, split or config.data.train_split)
    records = dataset.records
    order = np.random.default_rng(seed).permutation(len(records))[: max(int(num_images), 1)]
    paths = [records[i].path for i in order]

    def generate():
        for path in paths:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            images, image_size, _ = prepare_input(image, spec, input_size)
            yield {"images": images, "image_size": image_size}

    return generate


# --------------------------------------------------------------------------------- export
def tflite_path(out, name: str, resolution: str, quantize: str, raw: bool = False) -> Path:
    """OUT/NAME/tflite/model_<resolution>_<quantize>[_raw].tflite."""
    suffix = "_raw" if raw else ""
    return Path(out) / name / "tflite" / f"model_{resolution}_{quantize}{suffix}.tflite"


def export_tflite(model, path, spec: ExportSpec, category_ids, category_names, quantize: str = "none",
                  representative_data=None, input_size=None, raw: bool = False, source_run=None) -> Path:
    """Converts and writes ``path`` (.tflite) and its sidecar ``path.json``; returns ``path``."""
    module = TFLiteDetectionModule(model, spec, category_ids, input_size)
    flatbuffer = convert(module, quantize, representative_data, raw=raw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    height, width = module.input_size
    outputs = (
        {key: "float32" for key in module.raw.get_concrete_function().structured_outputs}
        if raw
        else {
            "detection_boxes": "float32 [1, D, 4] normalised by image_size",
            "detection_scores": "float32 [1, D]",
            "detection_classes": "float32 [1, D] dataset category ids, 0 past num_detections",
            "num_detections": "float32 [1]",
        }
    )
    info = export_info(
        spec, category_ids, category_names, source_run,
        format="tflite",
        quantize=quantize,
        raw_outputs=raw,
        input_size=[height, width],
        inputs={
            "images": f"uint8 [1, {height}, {width}, 3] resized RGB image top-left",
            "image_size": "int32 [2] (h, w) of the resized image",
        },
        outputs=outputs,
        ops=tflite_ops(flatbuffer),
        max_detections=int(model.postprocess_config.max_detections),
    )
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return path


def export_run_tflite(run_dir, out="saved_models", name: str | None = None, quantize: str = "none",
                      resolution: str | None = None, representative_images: int = 100,
                      input_size=None, pad_multiple: int | None = None, raw: bool = False) -> Path:
    """Exports a run's model to ``tflite_path(OUT, NAME, resolution, quantize)`` (or to OUT
    itself when it ends in ``.tflite``); int8 calibrates on ``representative_images`` images of
    the run's training split."""
    from msad_tf.training.runs import load_run

    config, model, ids, names = load_run(run_dir)
    spec = export_spec(model, config, resolution, pad_multiple)
    name = name or Path(run_dir).resolve().name
    out = Path(out)
    path = out if out.suffix == ".tflite" else tflite_path(out, name, spec.resolution, quantize, raw)
    side = spec.canvas_side
    size = tuple(input_size) if input_size else (side, side)
    data = (
        representative_dataset(config, spec, size, representative_images)
        if quantize == "int8"
        else None
    )
    return export_tflite(model, path, spec, ids, names, quantize, data, size, raw, source_run=run_dir)


# --------------------------------------------------------------------------------- running
class TFLiteDetector:
    """An exported .tflite file in the LiteRT interpreter (``ai_edge_litert``).

    Args:
      path: the .tflite file (its sidecar .json gives the ExportSpec).
      num_threads: interpreter threads (default: all CPUs).
    """

    def __init__(self, path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.info = read_export_info(self.path)
        self.spec = ExportSpec(
            self.info["resolution"], self.info["short_side"], self.info["max_side"],
            self.info["shift"], self.info["pad_multiple"], self.info.get("subsample", 1),
            self.info.get("input_norm", "imagenet_std"),
        )
        self.input_size = tuple(self.info["input_size"])
        self.interpreter = Interpreter(
            model_path=str(self.path), num_threads=num_threads or os.cpu_count()
        )
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def __call__(self, images, image_size) -> dict[str, np.ndarray]:
        """images uint8 [1, H, W, 3], image_size int32 [2] -> the model's outputs."""
        return self.runner(images=np.asarray(images, np.uint8), image_size=np.asarray(image_size, np.int32))

    def detect_image(self, image):
        """uint8 [H, W, 3] -> (boxes [n, 4] [ymin, xmin, ymax, xmax] original pixels, scores [n],
        category ids [n] int)."""
        images, image_size, scale = prepare_input(image, self.spec, self.input_size)
        out = self(images, image_size)
        n = int(out["num_detections"][0])
        size = image_size.astype(np.float64)
        boxes = out["detection_boxes"][0, :n] * np.concatenate([size, size]) / scale
        return boxes, out["detection_scores"][0, :n], out["detection_classes"][0, :n].astype(np.int64)


__all__ = [
    "QUANTIZATIONS",
    "RAW_OUTPUT_KEYS",
    "TFLiteDetectionModule",
    "TFLiteDetector",
    "convert",
    "export_run_tflite",
    "export_tflite",
    "flatten_head_outputs",
    "head_outputs_at",
    "lite_head_outputs",
    "postprocess_single",
    "prepare_input",
    "representative_dataset",
    "tflite_ops",
    "tflite_path",
]
