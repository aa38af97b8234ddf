"""Backbone, FPN, head and the aligned pyramid: shapes, names, and box placement."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_config
from msad_tf.losses.fcos import FCOSTargetSpec, assign_targets
from msad_tf.modeling.backbone import build_resnet, stage_channels
from msad_tf.modeling.detector import FCOSDetector
from msad_tf.modeling.fpn import FeaturePyramid, _upsample_to
from msad_tf.modeling.head import FCOSHead
from msad_tf.modeling.postprocess import PostprocessConfig, postprocess
from msad_tf.modeling.pyramid import AlignedPyramid


def test_pyramid_spec_levels_and_strides():
    p = AlignedPyramid((3, 4, 5, 6, 7), k=2)
    assert p.shift == 1
    assert p.low_levels == (2, 3, 4, 5, 6)
    assert p.strides(0) == (8, 16, 32, 64, 128)
    assert p.strides(1) == (4, 8, 16, 32, 64)
    p4 = AlignedPyramid((3, 4, 5, 6, 7), k=4)
    assert p4.low_levels == (1, 2, 3, 4, 5) and p4.min_level == 1
    with pytest.raises(ValueError, match="below P1"):
        AlignedPyramid((3, 4, 5, 6, 7), k=8)
    with pytest.raises(ValueError, match="power of two"):
        AlignedPyramid(k=3)


@pytest.mark.parametrize("name,width", [("resnet_tiny", 0.25), ("resnet18", 0.25), ("resnet50", 0.25)])
def test_backbone_strides_and_channels(name, width):
    model = build_resnet(name, width, norm="bn")
    outputs = model(tf.zeros([1, 67, 45, 3]))
    sizes = [tuple(o.shape[1:3]) for o in outputs]
    assert sizes == [(34, 23), (17, 12), (9, 6), (5, 3), (3, 2)]
    assert [o.shape[-1] for o in outputs[1:]] == list(stage_channels(name, width))
    assert outputs[0].shape[-1] == int(64 * width)


def test_resnet50_layer_names_match_keras_applications():
    ours = build_resnet("resnet50", 1.0, norm="bn")
    app = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    ours_layers = {layer.name: layer for layer in ours.layers}
    weighted = [layer for layer in app.layers if layer.weights]
    assert len(weighted) == 106
    for layer in weighted:
        assert layer.name in ours_layers, layer.name
        assert [w.shape for w in layer.weights] == [w.shape for w in ours_layers[layer.name].weights]


def test_pretrained_weights_need_width_one():
    with pytest.raises(ValueError, match="width-1.0"):
        build_resnet("resnet50", 0.5, weights="imagenet")


def test_fpn_levels_p1_to_p7_and_errors():
    backbone = build_resnet("resnet_tiny", 0.25, norm="bn")
    fpn = FeaturePyramid(8, min_level=1, in_channels=(16,) + stage_channels("resnet_tiny", 0.25))
    feats = backbone(tf.zeros([2, 100, 70, 3]))
    out = fpn(feats, levels=tuple(range(1, 8)))
    expected = [(50, 35), (25, 18), (13, 9), (7, 5), (4, 3), (2, 2), (1, 1)]
    assert [tuple(o.shape[1:3]) for o in out] == expected
    assert all(o.shape[-1] == 8 for o in out)
    assert [tuple(o.shape[1:3]) for o in fpn(feats, levels=(3, 4, 5))] == expected[2:5]
    with pytest.raises(ValueError, match="contiguous"):
        fpn(feats, levels=(3, 5))
    high_only = FeaturePyramid(8, min_level=3, in_channels=(16,) + stage_channels("resnet_tiny", 0.25))
    with pytest.raises(ValueError, match="built from P3"):
        high_only(feats, levels=(2, 3))
    clone = FeaturePyramid.from_config(fpn.get_config())
    assert clone.min_level == 1 and clone.channels == 8


# Ops for which TensorFlow's oneDNN layout pass looks up an int32 kernel and, finding none it may
# use, logs "E0000 ... oneDNN supports DT_INT32 only on platforms with AVX-512" (msad_tf/modeling/fpn.py).
_ONEDNN_INT32_NOISY = ("Transpose", "ConjugateTranspose", "MatMul", "BatchMatMul", "BatchMatMulV2", "Einsum")


def test_fpn_upsampling_is_repeat_bit_for_bit_and_its_gradient_has_no_int32_transpose():
    """The FPN's nearest 2x upsampling equals ops.repeat twice, outputs and gradients bit for bit
    (odd crops included), and its gradient graph holds no int32 Transpose (ops.repeat's does:
    Tile's gradient)."""

    def reference(x, like):
        up = keras.ops.repeat(keras.ops.repeat(x, 2, axis=1), 2, axis=2)
        shape = keras.ops.shape(like)
        return up[:, : shape[1], : shape[2], :]

    def value_and_gradient(upsample):
        spec = tf.TensorSpec([None, None, None, None], tf.float32)

        @tf.function(input_signature=[spec, spec, spec])
        def run(x, like, upstream):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = upsample(x, like)
                loss = tf.reduce_sum(y * upstream)
            return y, tape.gradient(loss, x)

        return run

    ours, theirs = value_and_gradient(_upsample_to), value_and_gradient(reference)
    rng = np.random.default_rng(0)
    shapes = [(2, 3, 5, 4, 6, 10), (2, 3, 5, 4, 5, 9), (1, 4, 4, 8, 7, 8), (3, 1, 1, 2, 1, 2)]
    for b, h, w, c, out_h, out_w in shapes:
        x = (rng.normal(size=(b, h, w, c)) * 1e3).astype(np.float32)
        # upstream gradients over 16 decades, so that a different summation order would show
        upstream = (rng.normal(size=(b, out_h, out_w, c)) * 10.0 ** rng.integers(-8, 8, (b, out_h, out_w, c)))
        like = np.zeros((b, out_h, out_w, 1), np.float32)
        got = ours(x, like, upstream.astype(np.float32))
        want = theirs(x, like, upstream.astype(np.float32))
        for a, r in zip(got, want):
            assert a.shape == r.shape
            assert np.array_equal(a.numpy().view(np.uint32), r.numpy().view(np.uint32))

    graph = ours.get_concrete_function().graph
    noisy = [op.name for op in graph.get_operations()
             if op.type in _ONEDNN_INT32_NOISY and op.get_attr("T") == tf.int32]
    assert not noisy, noisy
    # the reference does have one: this check would catch the op coming back
    reference_graph = theirs.get_concrete_function().graph
    assert any(op.type == "Transpose" and op.get_attr("T") == tf.int32
               for op in reference_graph.get_operations())


def test_head_shapes_and_shared_scales():
    head = FCOSHead(num_classes=5, channels=16, num_convs=2, gn_groups=4, num_levels=2)
    out = head([tf.zeros([2, 8, 6, 16]), tf.zeros([2, 4, 3, 16])])
    assert out[0]["cls_logits"].shape == (2, 8, 6, 5)
    assert out[1]["box_reg"].shape == (2, 4, 3, 4)
    assert out[1]["centerness"].shape == (2, 4, 3)
    assert head.scales.shape == (2,)
    prior = 1 / (1 + np.exp(-float(out[0]["cls_logits"][0, 0, 0, 0])))
    assert prior == pytest.approx(0.01, rel=1e-4)
    assert FCOSHead.from_config(head.get_config()).num_convs == 2


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("size", [(97, 130), (255, 257), (129, 64)])
def test_aligned_pairs_have_identical_shapes(size, k):
    model = FCOSDetector(tiny_model_config(k=k), num_classes=3, train_mode="aligned")
    assert model.pyramid.shift == {2: 1, 4: 2}[k]
    images = tf.random.normal([1, *size, 3])
    high = model.pyramid_features(images, 0)
    low = model.pyramid_features(model.pyramid.subsample(images), model.pyramid.shift)
    assert len(high) == len(low) == 5
    for h, l in zip(high, low):
        assert h.shape == l.shape


def test_k4_teacher_step_reads_p1_to_p5():
    from msad_tf.modeling.teacher import MultiScaleTeacher

    model = MultiScaleTeacher(tiny_model_config(k=4, norm="gn"), 3)
    assert model.pyramid.levels(model.shift_for("low")) == (1, 2, 3, 4, 5)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    images = tf.random.normal([2, 128, 128, 3])
    batch = {"images": images, "boxes": tf.constant([[[8.0, 10.0, 40.0, 36.0], [30.0, 50.0, 110.0, 120.0]]] * 2),
             "classes": tf.constant([[0, 2]] * 2)}
    logs = {k: float(v) for k, v in model.train_step(batch).items()}
    assert logs["loss"] == pytest.approx(logs["loss_high"] + logs["loss_low"] + 0.4 * logs["loss_fused"], rel=1e-5)
    assert all(np.isfinite(v) for v in logs.values())
    fused = model.fused_features(images)
    high = model.pyramid_features(images, 0)
    assert [f.shape for f in fused] == [h.shape for h in high]


def _perfect_outputs(targets, sizes, num_classes):
    """Head outputs that predict the assigned targets exactly (logits +-10)."""
    outputs, start = [], 0
    for h, w in sizes:
        n = h * w
        labels = targets["labels"][:, start:start + n]
        onehot = tf.one_hot(tf.maximum(labels, 0), num_classes) * tf.cast(labels >= 0, tf.float32)[..., None]
        outputs.append({
            "cls_logits": tf.reshape(onehot * 20.0 - 10.0, [1, h, w, num_classes]),
            "box_reg": tf.reshape(targets["box_targets"][:, start:start + n], [1, h, w, 4]),
            "centerness": tf.reshape(tf.where(labels >= 0, 10.0, -10.0), [1, h, w]),
        })
        start += n
    return outputs


def test_box_recovered_from_high_and_aligned_low_branch():
    pyramid = AlignedPyramid((3, 4, 5, 6, 7), 2)
    spec = FCOSTargetSpec(pyramid.strides(0), ((0, 16), (16, 32), (32, 64), (64, 128), (128, 1e8)))
    box = [[[40.0, 72.0, 96.0, 120.0]]]
    sizes = [(256 // s, 256 // s) for s in pyramid.strides(0)]
    targets = assign_targets(tf.constant(box), tf.constant([[1]]), sizes, spec)
    assert int(tf.reduce_sum(tf.cast(targets["labels"] >= 0, tf.int32))) > 0
    outputs = _perfect_outputs(targets, sizes, num_classes=3)
    config = PostprocessConfig(max_detections=5)
    high = postprocess(outputs, pyramid.strides(0), tf.constant([[256, 256]]), config)
    low = postprocess(outputs, pyramid.strides(pyramid.shift), tf.constant([[128, 128]]), config)
    assert int(high["num_detections"][0]) == 1 and int(low["num_detections"][0]) == 1
    np.testing.assert_allclose(high["boxes"][0, 0].numpy(), box[0][0], atol=1e-4)
    np.testing.assert_allclose(low["boxes"][0, 0].numpy(), np.array(box[0][0]) / 2, atol=1e-4)
    assert int(high["classes"][0, 0]) == 1 and int(low["classes"][0, 0]) == 1


def test_nms_is_class_aware():
    out = [{
        "cls_logits": tf.constant([[[[5.0, -9.0], [5.0, -9.0], [-9.0, 5.0]]]]),
        "box_reg": tf.constant([[[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]]]),
        "centerness": tf.constant([[[5.0, 4.0, 5.0]]]),
    }]
    det = postprocess(out, (8,), tf.constant([[8, 24]]), PostprocessConfig(max_detections=10))
    # cells 0 and 1 (class 0) overlap with IoU 1/3 < 0.6: both kept; cell 2 is another class
    assert int(det["num_detections"][0]) == 3
    det = postprocess(out, (8,), tf.constant([[8, 24]]), PostprocessConfig(max_detections=10, nms_iou=0.3))
    assert int(det["num_detections"][0]) == 2
    assert sorted(det["classes"][0, :2].numpy().tolist()) == [0, 1]


def test_detector_detect_shapes_and_config_roundtrip():
    model = FCOSDetector(tiny_model_config(), num_classes=3, train_mode="aligned")
    det = model.detect(tf.zeros([2, 128, 128, 3]))
    assert det["boxes"].shape == (2, 100, 4) and det["classes"].dtype == tf.int32
    low = model.detect(tf.zeros([2, 64, 64, 3]), shift=1)
    assert low["scores"].shape == (2, 100)
    clone = FCOSDetector.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert model.shift_for("low") == 1
    single = FCOSDetector(tiny_model_config(), num_classes=3)
    assert single.shift_for("low") == 0
    assert single.count_params() < model.count_params()


def test_boxes_clipped_to_nothing_are_dropped():
    # cell 2 (x = 20) predicts a box [18, 22] in x, entirely right of the 8-px-wide image
    out = [{
        "cls_logits": tf.constant([[[[5.0], [-9.0], [5.0]]]]),
        "box_reg": tf.constant([[[[0.25, 0.25, 0.25, 0.25]] * 3]]),
        "centerness": tf.constant([[[5.0, 5.0, 5.0]]]),
    }]
    det = postprocess(out, (8,), tf.constant([[8, 8]]), PostprocessConfig(max_detections=10))
    assert int(det["num_detections"][0]) == 1
    np.testing.assert_allclose(det["boxes"][0, 0].numpy(), [2, 2, 6, 6])
