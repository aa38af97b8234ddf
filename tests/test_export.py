"""Deployment: SavedModel signatures (as TF Serving sees them), REST bodies, parity with Keras in a
fresh process, TFLite builtin-only conversion and parity, bad serving inputs, CLI glue.

One tiny student run (random weights, cls bias raised so detections pass the threshold) is
exported once per module: H = 128, L = 64 (``eval.low_input: resize``; the default subsample is
tested in test_low_input.py), shift 1, so the exports read P2'..P6' of a 64 px input.
"""
import argparse
import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import student_run_config, write_confident_run
from msad_tf.data.pipeline import prepare_image
from msad_tf.data.preprocess import pad_to_multiple
from msad_tf.data.synthetic import CATEGORY_IDS, CLASS_NAMES, make_synthetic_dataset
from msad_tf.export import add_benchmark_infer_parser, add_export_parser
from msad_tf.export.saved_model import EXPORT_INFO_FILE, OUTPUT_KEYS
from msad_tf.export.tflite import (
    FLOAT_SCOPE,
    QUANTIZATIONS,
    TFLiteDetectionModule,
    TFLiteDetector,
    export_run_tflite,
    flatten_head_outputs,
    tflite_ops,
    tflite_tensor_types,
)
from msad_tf.training import runs

README = Path(__file__).resolve().parents[1] / "saved_models" / "README.md"
MAX_DET = 100


def make_tiny_run(root: Path) -> Path:
    """A student run dir on a 6+6 image synthetic dataset, with a trained-ish output distribution."""
    make_synthetic_dataset(root / "data", num_train=6, num_val=6, image_size=96, progress=False)
    return write_confident_run(root, student_run_config(root, low_input="resize"), CATEGORY_IDS, CLASS_NAMES)


def cli(argv):
    parser = argparse.ArgumentParser(prog="msad")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    bench = sub.add_parser("benchmark").add_subparsers(dest="what", required=True)
    add_benchmark_infer_parser(bench)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = make_tiny_run(root)
    out = root / "saved_models"
    args = cli(["export", "--run", str(run), "--out", str(out), "--name", "tiny"])
    args.func(args)
    tflite = {
        q: export_run_tflite(run, out, "tiny", quantize=q, representative_images=3) for q in QUANTIZATIONS
    }
    raw = export_run_tflite(run, out, "tiny", quantize="none", raw=True)
    config, model, ids, _ = runs.load_run(run)
    return {
        "root": root, "run": run, "saved_model": out / "tiny" / "1", "tflite": tflite, "raw": raw,
        "model": model, "config": config, "ids": ids,
    }


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported["saved_model"]))


def keras_reference(model, encoded_images, short_side=64, max_side=64, pad_multiple=64, shift=1):
    """Detections of the Keras model through the input pipeline's own per-image transform and
    padded batching: boxes in resized pixels, sizes [B, 2]."""
    prepared = [
        prepare_image(
            {"encoded": tf.constant(e), "image_id": tf.constant(0, tf.int64),
             "boxes": tf.zeros([0, 4]), "classes": tf.zeros([0], tf.int32)},
            tf.constant(0, tf.int64), short_side=short_side, max_side=max_side, training=False,
            jitter=(1.0, 1.0), flip=False, max_boxes=1, seed=0,
        )
        for e in encoded_images
    ]
    sizes = tf.stack([p["image_sizes"] for p in prepared])
    extent = tf.reduce_max(sizes, 0)
    batch = tf.stack([
        tf.pad(p["images"], [[0, extent[0] - s[0]], [0, extent[1] - s[1]], [0, 0]])
        for p, s in zip(prepared, sizes)
    ])
    out = model.detect(pad_to_multiple(batch, pad_multiple), sizes, shift)
    return {k: v.numpy() for k, v in out.items()}, sizes.numpy()


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_export_layout_and_record(exported):
    version = exported["saved_model"]
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    info = json.loads((version / EXPORT_INFO_FILE).read_text())
    assert info["resolution"] == "low" and info["shift"] == 1
    assert (info["short_side"], info["max_side"], info["pad_multiple"]) == (64, 64, 64)
    assert info["category_ids"] == list(CATEGORY_IDS) and info["category_names"] == list(CLASS_NAMES)
    assert Path(info["source_run"]) == exported["run"].resolve()
    assert exported["tflite"]["int8"] == version.parent / "tflite" / "model_low_int8.tflite"


def test_signatures_as_tf_serving_sees_them(loaded):
    assert set(loaded.signatures) == {"serving_default", "image_bytes"}
    expected_inputs = {
        "serving_default": {"images": (tf.uint8, [None, None, None, 3])},
        "image_bytes": {"image_bytes": (tf.string, [None])},
    }
    for name, inputs in expected_inputs.items():
        signature = loaded.signatures[name]
        args, kwargs = signature.structured_input_signature
        assert args == ()
        assert {k: (v.dtype, v.shape.as_list()) for k, v in kwargs.items()} == inputs
        outputs = {k: (v.dtype, v.shape.as_list()) for k, v in signature.structured_outputs.items()}
        assert outputs == {
            "detection_boxes": (tf.float32, [None, MAX_DET, 4]),
            "detection_scores": (tf.float32, [None, MAX_DET]),
            "detection_classes": (tf.float32, [None, MAX_DET]),
            "num_detections": (tf.float32, [None]),
        }


_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
export_dir, inputs, out = sys.argv[1:4]
data = np.load(inputs)
model = tf.saved_model.load(export_dir)
images = model.signatures["serving_default"](images=tf.constant(data["images"]))
encoded = tf.constant([bytes(data["png0"]), bytes(data["png1"])])
decoded = model.signatures["image_bytes"](image_bytes=encoded)
np.savez(out, **{"images_" + k: v.numpy() for k, v in images.items()},
         **{"bytes_" + k: v.numpy() for k, v in decoded.items()})
"""


def test_saved_model_in_fresh_process_matches_keras(exported, tmp_path):
    val = sorted((exported["root"] / "data" / "val").iterdir())
    pictures = [np.asarray(Image.open(path).convert("RGB")) for path in val[:3]]
    same_size = np.stack(pictures[:2])
    buffer = io.BytesIO()
    Image.fromarray(pictures[2]).resize((150, 70)).save(buffer, "JPEG", quality=90)
    encoded = [png_bytes(np.asarray(Image.fromarray(pictures[0]).resize((60, 90)))), buffer.getvalue()]
    np.savez(
        tmp_path / "in.npz", images=same_size,
        png0=np.frombuffer(encoded[0], np.uint8), png1=np.frombuffer(encoded[1], np.uint8),
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(exported["saved_model"]), str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")],
        check=True, env=env, capture_output=True, timeout=240,
    )
    served = np.load(tmp_path / "out.npz")
    ids = np.array(exported["ids"], np.float32)
    cases = [("images", [png_bytes(im) for im in same_size]), ("bytes", encoded)]
    for prefix, images in cases:
        reference, sizes = keras_reference(exported["model"], images)
        num = served[f"{prefix}_num_detections"].astype(int)
        np.testing.assert_array_equal(num, reference["num_detections"])
        assert num.min() > 0
        scale = np.concatenate([sizes, sizes], 1)[:, None, :].astype(np.float32)
        worst = 0.0
        for b, n in enumerate(num):
            boxes = served[f"{prefix}_detection_boxes"][b]
            scores = served[f"{prefix}_detection_scores"][b]
            classes = served[f"{prefix}_detection_classes"][b]
            pixels = boxes[:n] * scale[b]
            np.testing.assert_allclose(pixels, reference["boxes"][b, :n], atol=1e-3)
            worst = max(worst, float(np.abs(pixels - reference["boxes"][b, :n]).max()))
            np.testing.assert_allclose(scores[:n], reference["scores"][b, :n], atol=1e-5)
            np.testing.assert_array_equal(classes[:n], ids[reference["classes"][b, :n]])
            assert np.all(classes[n:] == 0) and np.all(boxes[n:] == 0)
            assert boxes.min() >= 0.0 and boxes.max() <= 1.0 + 1e-6
        print(f"saved_model {prefix} (fresh process) vs keras: detections {num.tolist()}, "
              f"box max |diff| {worst:.2e} px")


def _readme_rest_bodies():
    text = README.read_text()
    found = re.findall(r"<!-- msad:rest (\w+) -->\s*```json\n(.*?)```", text, re.S)
    return {name: json.loads(body) for name, body in found}


def _decode_rest(body, signature):
    """TF Serving's row ("instances") format -> signature inputs: {"b64": s} -> bytes."""
    (name, spec), = signature.structured_input_signature[1].items()

    def value(v):
        if isinstance(v, dict):
            return base64.b64decode(v["b64"])
        return v

    rows = [value(row) for row in body["instances"]]
    return {name: tf.constant(rows, dtype=spec.dtype)}


def test_readme_rest_bodies_run_through_the_signatures(loaded):
    bodies = _readme_rest_bodies()
    assert set(bodies) == {"serving_default", "image_bytes"}
    for name, body in bodies.items():
        assert body["signature_name"] == name
        out = loaded.signatures[name](**_decode_rest(body, loaded.signatures[name]))
        assert set(out) == set(OUTPUT_KEYS)
        assert out["detection_boxes"].shape == (len(body["instances"]), MAX_DET, 4)
        rows = [{k: v[i].numpy().tolist() for k, v in out.items()} for i in range(len(body["instances"]))]
        json.dumps({"predictions": rows})
    text = README.read_text()
    for key in ('request.inputs["image_bytes"]', 'request.inputs["images"]', "NAME/VERSION", "models.config"):
        assert key in text, key


@pytest.mark.parametrize(
    "signature, value, message",
    [
        ("serving_default", tf.zeros([1, 8, 8, 3], tf.float32), "expected to be a uint8 tensor"),
        ("serving_default", tf.zeros([8, 8, 3], tf.uint8), "images must be [batch, height, width, 3] (rank 4)"),
        ("serving_default", tf.zeros([1, 8, 8, 4], tf.uint8), "images must be [batch, height, width, 3]; got"),
        ("serving_default", tf.zeros([1, 0, 8, 3], tf.uint8), "image height and width must be > 0"),
        ("serving_default", tf.zeros([0, 8, 8, 3], tf.uint8), "images holds no image (batch size 0)"),
        ("image_bytes", tf.constant([b"not an image"]), "Unknown image file format"),
        ("image_bytes", tf.constant([[b"x"]]), "image_bytes must be [batch] (rank 1)"),
        ("image_bytes", tf.zeros([2], tf.uint8), "expected to be a string tensor"),
    ],
)
def test_bad_inputs_give_clear_errors(loaded, signature, value, message):
    name = "images" if signature == "serving_default" else "image_bytes"
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        loaded.signatures[signature](**{name: value})
    ok = loaded.signatures["serving_default"](images=tf.zeros([1, 8, 8, 3], tf.uint8))
    assert ok["detection_boxes"].shape == (1, MAX_DET, 4)


def test_tflite_builtin_ops_only(exported):
    for name, path in list(exported["tflite"].items()) + [("raw", exported["raw"])]:
        ops = tflite_ops(path)
        assert not [op for op in ops if op.startswith("CUSTOM") or "Flex" in op], (name, ops)
        if name != "raw":
            assert ops.get("NON_MAX_SUPPRESSION_V5") == 1 and "WHILE" not in ops, (name, ops)
        assert json.loads(path.with_suffix(".json").read_text())["ops"] == ops
        detector = TFLiteDetector(path)
        inputs = detector.runner.get_input_details()
        assert inputs["images"]["dtype"] == np.uint8 and list(inputs["images"]["shape"]) == [1, 64, 64, 3]
        assert inputs["image_size"]["dtype"] == np.int32 and list(inputs["image_size"]["shape"]) == [2]
    print("tflite ops (int8):", ", ".join(tflite_ops(exported["tflite"]["int8"])))


def _canvas(seed=2):
    rng = np.random.default_rng(seed)
    images = np.zeros((1, 64, 64, 3), np.uint8)
    images[0, :64, :48] = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    return images, np.array([64, 48], np.int32)


def test_tflite_float_matches_keras(exported):
    model = exported["model"]
    images, size = _canvas()
    module = TFLiteDetectionModule(model, exported_spec(exported), exported["ids"])
    normalized, _ = module.normalized_input(tf.constant(images), tf.constant(size))
    keras_raw = flatten_head_outputs(model.head_outputs(model.pyramid_features(normalized, 1)))
    raw = TFLiteDetector(exported["raw"])(images, size)
    raw_diff = {k: float(np.abs(raw[k] - keras_raw[k].numpy()).max()) for k in keras_raw}
    assert max(raw_diff.values()) < 1e-3, raw_diff

    keras = {k: v.numpy() for k, v in model.detect(normalized, size[None], 1).items()}
    n_keras = int(keras["num_detections"][0])
    boxes = keras["boxes"][0, :n_keras]
    kept = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    n = int(kept.sum())
    lite = TFLiteDetector(exported["tflite"]["none"])(images, size)
    assert n > 0 and int(lite["num_detections"][0]) >= n
    if n_keras < MAX_DET:
        assert int(lite["num_detections"][0]) == n
    pixels = lite["detection_boxes"][0, :n] * np.tile(size, 2)
    box_diff = float(np.abs(pixels - boxes[kept]).max())
    score_diff = float(np.abs(lite["detection_scores"][0, :n] - keras["scores"][0, :n_keras][kept]).max())
    assert box_diff < 1e-3 and score_diff < 1e-5
    classes = np.array(exported["ids"])[keras["classes"][0, :n_keras][kept]]
    np.testing.assert_array_equal(lite["detection_classes"][0, :n], classes)
    print(f"tflite float vs keras: raw max |diff| {raw_diff}; {n} detections ({n_keras - n} zero-area "
          f"Keras boxes in the padding dropped), box max |diff| {box_diff:.2e} px, score {score_diff:.2e}")


def exported_spec(exported):
    from msad_tf.export.saved_model import export_spec

    return export_spec(exported["model"], exported["config"])


def test_quantized_tflite_models_run(exported):
    images, size = _canvas()
    float_scores = TFLiteDetector(exported["tflite"]["none"])(images, size)["detection_scores"][0]
    for quantize in ("fp16", "dynamic", "int8"):
        out = TFLiteDetector(exported["tflite"][quantize])(images, size)
        n = int(out["num_detections"][0])
        assert 0 < n <= MAX_DET
        assert set(out["detection_classes"][0, :n].astype(int)) <= set(CATEGORY_IDS)
        assert out["detection_boxes"].min() >= 0.0 and out["detection_boxes"].max() <= 1.0 + 1e-6
        top = abs(float(out["detection_scores"][0, 0]) - float(float_scores[0]))
        assert top < 0.1, (quantize, top)
        print(f"{quantize}: {n} detections, top score |diff| vs float {top:.4f}, "
              f"{exported['tflite'][quantize].stat().st_size} bytes")


def test_int8_quantizes_the_network_and_keeps_postprocessing_float(exported):
    types = tflite_tensor_types(exported["tflite"]["int8"])
    post = {name: t for name, t in types.items() if FLOAT_SCOPE in name}
    assert post and "INT8" not in post.values()
    network = [t for name, t in types.items() if "convolution" in name]
    assert network and set(network) == {"INT8"}
    assert tflite_ops(exported["tflite"]["int8"]).get("QUANTIZE", 0) > 0


def test_export_cli_defaults_and_errors(exported, capsys):
    args = cli(["export", "--run", "r"])
    assert (args.format, args.quantize, args.out, args.resolution, args.version) == (
        "saved_model", "none", "saved_models", None, 1)
    args = cli(["benchmark", "infer", "--run", "r", "--runs-high", "h"])
    assert args.quantize == list(QUANTIZATIONS) and args.runs_high == "h"
    assert args.formats == ["keras", "saved_model", "tflite"] and args.threads is None
    args = cli(["benchmark", "infer", "--run", "r", "--threads", "1", "2", "--export-out", "o"])
    assert args.threads == [1, 2] and args.export_out == "o"
    with pytest.raises(ValueError, match="--quantize applies to --format tflite"):
        args = cli(["export", "--run", str(exported["run"]), "--quantize", "int8"])
        args.func(args)
    with pytest.raises(ValueError, match="exists and is not empty"):
        args = cli(["export", "--run", str(exported["run"]), "--out", str(exported["root"] / "saved_models"),
                    "--name", "tiny"])
        args.func(args)


def test_student_deploys_low_teacher_high(exported):
    from msad_tf.export.saved_model import deploy_resolution, export_spec

    model, config = exported["model"], exported["config"]
    assert deploy_resolution(model, config) == "low"
    high = export_spec(model, config, "high")
    assert (high.short_side, high.shift, high.pad_multiple) == (128, 0, 128)
    assert export_spec(model, config, "low", pad_multiple=128).pad_multiple == 128
    with pytest.raises(ValueError, match="multiple of the coarsest stride"):
        export_spec(model, config, "low", pad_multiple=32)


def test_lite_head_equals_keras_head():
    """The TFLite head (merged tower convs, 4-D GroupNorm) against FCOSHead, 3-conv towers."""
    from msad_tf.export.tflite import lite_head_outputs
    from msad_tf.modeling.head import FCOSHead

    keras.utils.set_random_seed(1)
    head = FCOSHead(num_classes=5, channels=16, num_convs=3, gn_groups=4, num_levels=3)
    rng = np.random.default_rng(1)
    features = [tf.constant(rng.normal(0, 2, (1, s, s + 1, 16)).astype(np.float32)) for s in (8, 4, 2)]
    head(features)
    for layer in head.cls_tower + head.box_tower:
        if isinstance(layer, keras.layers.GroupNormalization):
            layer.gamma.assign(rng.normal(1, 0.3, layer.gamma.shape).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.3, layer.beta.shape).astype(np.float32))
    head.scales.assign([0.5, 1.0, 2.0])
    reference = head(features)
    lite = lite_head_outputs(head, features)
    for ref, got in zip(reference, lite):
        for key in ("cls_logits", "box_reg", "centerness"):
            assert got[key].shape == ref[key].shape, key
            np.testing.assert_allclose(got[key].numpy(), ref[key].numpy(), atol=1e-4, rtol=1e-4)
    # batch > 1 falls back to the Keras head
    batch = [tf.concat([f, f], 0) for f in features]
    assert lite_head_outputs(head, batch)[0]["cls_logits"].shape[0] == 2


def test_interleaved_latency_takes_turns():
    from msad_tf.export.benchmark_infer import interleaved_latency

    order = []
    times = interleaved_latency({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 1, 3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert all(len(times[k]["wall"]) == len(times[k]["cpu"]) == 3 for k in "ab")


def _demo_args(exported, out):
    """``run_demo`` arguments under which OUT/student (a copy of the tiny run) is the demo's
    finished student: the demo config is that run's own config (a run of another config would
    be retrained)."""
    from msad_tf.config import load_config
    from msad_tf.demo import DEMO_RUNS

    config_path = out / "demo_config.yaml"
    config = load_config(exported["run"] / runs.CONFIG_FILE,
                         [f"train.teacher_run={out / 'teacher'}", "train.steps_per_epoch=1"])
    config.save(config_path)
    config.save(out / "student" / runs.CONFIG_FILE)
    return dict(config_path=config_path, out=out, data_root=str(exported["root"] / "data"),
                runs_to_do=(DEMO_RUNS[-1],), overrides=[])


def test_demo_ends_with_the_student_export(exported, tmp_path, monkeypatch):
    """``run_demo`` on a finished tiny student: evaluation, then the deployment step (here
    TFLite and Keras only, 2 timed calls): the TFLite model kept in the msad export layout at
    L, the benchmark of the student at L against the same network at H printed, in results.md
    and in benchmark_infer.json; no export with export_student False (as the ablation suites
    call it)."""
    import shutil

    from msad_tf import demo

    monkeypatch.setattr(demo, "DEMO_EXPORT", dict(demo.DEMO_EXPORT, formats=("keras", "tflite"),
                                                  warmup=0, repeats=2))
    out = tmp_path / "demo"
    shutil.copytree(exported["run"], out / "student")
    demo.run_demo(**_demo_args(exported, out), results_name="no_export", export_student=False)
    assert not (out / "export").exists() and not (out / "benchmark_infer.json").exists()
    demo.run_demo(**_demo_args(exported, out))
    lite = out / "export" / "student" / "tflite" / "model_low_none.tflite"
    info = json.loads(lite.with_suffix(".json").read_text())
    assert (info["resolution"], info["shift"], info["input_size"]) == ("low", 1, [64, 64])
    result = json.loads((out / "benchmark_infer.json").read_text())
    assert result["exports"]["tflite"]["none"] == str(lite) and result["repeats"] == 2
    rows = ["keras", "tflite_none/1t", "tflite_none/2t"]
    assert list(result["ratio_low_over_high"]) == rows
    assert result["resolutions"]["low"]["spec"]["shift"] == 1
    assert result["resolutions"]["high"]["spec"]["shift"] == 0
    results_md = (out / "results.md").read_text()
    assert "MSAD student @L" in results_md and "Deployment" in results_md
    for row in rows:
        assert row in results_md
        assert result["ratio_low_over_high"][row] > 0 and result["cpu_ratio_low_over_high"][row] > 0


@pytest.mark.slow
def test_demo_export_keeps_a_servable_saved_model(exported, tmp_path):
    """The demo's deployment step with its own settings: the SavedModel kept in OUT/export/
    student/1 serves, and the table has the Keras, SavedModel and TFLite rows."""
    from msad_tf.demo import export_and_benchmark

    result, table = export_and_benchmark(exported["run"], tmp_path)
    version = tmp_path / "export" / "student" / "1"
    assert json.loads((version / EXPORT_INFO_FILE).read_text())["resolution"] == "low"
    served = tf.saved_model.load(str(version)).signatures["serving_default"](
        images=tf.zeros([1, 64, 64, 3], tf.uint8))
    assert served["detection_boxes"].shape == (1, MAX_DET, 4)
    assert list(result["ratio_low_over_high"]) == ["keras", "saved_model", "tflite_none/1t", "tflite_none/2t"]
    assert "saved_model" in table


@pytest.mark.slow
def test_export_ap_matches_keras(tmp_path):
    """AP of every export format against Keras on a trained run, at both resolutions: the run in
    MSAD_EXPORT_RUN, else a 300-step aligned training on the synthetic dataset (about 10 minutes
    on 2 CPU cores)."""
    from msad_tf.cli import main
    from msad_tf.export.benchmark_infer import export_ap_report, format_ap_report

    run = os.environ.get("MSAD_EXPORT_RUN")
    if run is None:
        data = tmp_path / "data"
        main(["make-dataset", "--out", str(data), "--num-train", "400", "--num-val", "100", "--quiet"])
        run = tmp_path / "aligned"
        main(["train", "--config", "configs/demo.yaml", "--run-dir", str(run), "--quiet",
              "--set", f"data.root={data}", "--set", "train.mode=aligned", "--set", "train.epochs=3",
              "--set", "train.steps_per_epoch=100", "--set", "train.lr_decay_epochs=[2,2.7]"])
    for resolution in ("high", "low"):
        report = export_ap_report(run, resolution=resolution, representative_images=100)
        print(format_ap_report(report))
        assert report["metrics"]["keras"]["AP"] > 1.0
        assert report["ok"], report["checks"]
