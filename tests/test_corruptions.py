"""Robustness evaluation (COCO-C style): the corruption families, their determinism and
severities, the per-image hook of the evaluation pipeline, and ``msad evaluate --corruption``.

The end-to-end tests use one tiny student run (random weights, cls bias raised so detections
pass the threshold) on 6 val images of 96 px, H = 128, L = 64; its val annotations are replaced
by its own three best clean detections per image at L, so the clean AP at L is high and any
change of the input moves it.
"""
import colorsys
import csv
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFilter

from conftest import student_run_config, write_confident_run
from msad_tf.evaluation import corruptions
from msad_tf.evaluation.corruptions import FAMILIES, SEVERITY_CONSTANTS, Corruption, corrupt, psnr
from msad_tf.resolution import input_geometry

RANDOM_FAMILIES = ("gaussian_noise", "fog")


def _test_image(height=48, width=64, seed=0):
    """A textured uint8 RGB image: smoothed noise with strong contrast, plus a dark and a bright
    rectangle (edges, and pixels at both ends of the range)."""
    rng = np.random.default_rng(seed)
    noise = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(noise.filter(ImageFilter.GaussianBlur(2)), np.float64)
    image = np.clip((smooth - smooth.mean()) * 4 + 128, 0, 255)
    image[4:14, 6:20] = 0
    image[-14:-4, -22:-6] = 255
    return image.astype(np.uint8)


# ----------------------------------------------------------------------------- the families
#: imagecorruptions' constant ``c`` of each family, transcribed one severity a row (columns:
#: gaussian_noise scale, gaussian_blur sigma, defocus_blur (radius, alias_blur), contrast factor,
#: brightness offset, jpeg_compression quality, fog (strength, wibbledecay)).
IMAGECORRUPTIONS_BY_SEVERITY = [
    (0.08, 1, (3, 0.1), 0.4, 0.1, 25, (1.5, 2)),
    (0.12, 2, (4, 0.5), 0.3, 0.2, 18, (2, 2)),
    (0.18, 3, (6, 0.5), 0.2, 0.3, 15, (2.5, 1.7)),
    (0.26, 4, (8, 0.5), 0.1, 0.4, 10, (2.5, 1.5)),
    (0.38, 6, (10, 0.5), 0.05, 0.5, 7, (3, 1.4)),
]


def test_severity_constants_are_imagecorruptions():
    assert FAMILIES == tuple(SEVERITY_CONSTANTS) == (
        "gaussian_noise", "gaussian_blur", "defocus_blur", "contrast", "brightness", "jpeg_compression", "fog"
    )
    assert all(len(constants) == len(IMAGECORRUPTIONS_BY_SEVERITY) for constants in SEVERITY_CONSTANTS.values())
    for severity, expected in enumerate(IMAGECORRUPTIONS_BY_SEVERITY, 1):
        assert tuple(SEVERITY_CONSTANTS[family][severity - 1] for family in FAMILIES) == expected, severity
    with pytest.raises(ValueError, match="unknown corruption 'snow'"):
        corrupt(_test_image(), "snow", 1)
    with pytest.raises(ValueError, match="severity 6"):
        Corruption("fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(_test_image().astype(np.float32), "fog", 1)


def test_severity_zero_and_none_are_the_identity():
    image = _test_image()
    for family in FAMILIES:
        assert corrupt(image, family, 0, 5) is image
        assert Corruption(family, 0).is_identity and Corruption(family, 0).label == "clean"
        tensor = tf.constant(image)
        assert Corruption(family, 0).tf_apply(tensor, tf.constant(5, tf.int64)) is tensor
    assert corrupt(image, "none", 3, 5) is image


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_per_image_and_independent_of_global_rng(family):
    image = _test_image()
    for severity in (1, 5):
        np.random.seed(1)
        first = corrupt(image, family, severity, image_id=42)
        np.random.seed(2)
        np.random.random(1000)
        tf.random.set_seed(3)
        second = corrupt(image, family, severity, image_id=42)
        np.testing.assert_array_equal(first, second)
        other = corrupt(image, family, severity, image_id=43)
        if family in RANDOM_FAMILIES:
            assert np.abs(first.astype(int) - other).mean() > 1.0, "different ids: different noise"
        else:
            np.testing.assert_array_equal(first, other)
        assert not np.array_equal(first, image)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(48, 64, 3), (37, 53, 3), (1, 1, 3), (3, 2, 3), (20, 31)])
def test_dtype_shape_and_range_are_preserved(family, shape):
    image = _test_image(*shape[:2])
    image = image if len(shape) == 3 else image[..., 0]
    for severity in range(1, 6):
        out = corrupt(image, family, severity, image_id=7)
        assert out.dtype == np.uint8 and out.shape == image.shape, (family, severity)
    # the tf.data hook: same pixels, static shape kept
    hook = Corruption(family, 3).tf_apply
    rgb = _test_image(*shape[:2])
    out = tf.function(hook)(tf.constant(rgb), tf.constant(7, tf.int64))
    assert out.dtype == tf.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out.numpy(), corrupt(rgb, family, 3, 7))


@pytest.mark.parametrize("family", FAMILIES)
def test_distortion_grows_with_severity(family):
    """PSNR to the clean image decreases strictly with the severity (per image for every family
    but fog; fog, whose severities 3 and 4 share the haze strength and differ in its roughness,
    on average over images, and its image weight max / (max + strength) never increases)."""
    ids = range(6) if family == "fog" else (11,)
    curves = []
    for image_id in ids:
        image = _test_image(seed=image_id)
        curves.append([psnr(image, corrupt(image, family, s, image_id)) for s in range(1, 6)])
    curve = np.mean(curves, axis=0)
    assert np.all(np.diff(curve) < 0), (family, np.round(curve, 2))
    assert curve[0] < 45 and curve[-1] < 30, (family, np.round(curve, 2))
    if family == "fog":
        weights = [1.0 / (1.0 + strength) for strength, _ in SEVERITY_CONSTANTS["fog"]]
        assert np.all(np.diff(weights) <= 0)


@pytest.mark.parametrize("severity", range(1, 6))
def test_jpeg_is_the_pillow_round_trip_at_the_stated_quality(severity):
    image = _test_image()
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(corrupt(image, "jpeg_compression", severity), expected)


def _direct_filter(channel, kernel, mode):
    """Correlation by explicit shifted sums (no FFT)."""
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(channel, ((ry, ry), (rx, rx)), mode=mode)
    out = np.zeros(channel.shape)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[dy:dy + channel.shape[0], dx:dx + channel.shape[1]]
    return out


def _to_uint8(x):
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_blurs_are_the_stated_filters(severity):
    image = _test_image()
    x = image / 255.0
    sigma = SEVERITY_CONSTANTS["gaussian_blur"][severity - 1]
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    expected = np.stack([_direct_filter(x[..., d], np.outer(taps, taps), "edge") for d in range(3)], -1)
    out = corrupt(image, "gaussian_blur", severity)
    assert np.abs(out.astype(int) - _to_uint8(expected)).max() <= 1
    assert np.mean(out != _to_uint8(expected)) < 1e-3

    disk_radius, alias = SEVERITY_CONSTANTS["defocus_blur"][severity - 1]
    kernel = corruptions.disk_kernel(disk_radius, alias)
    assert kernel.shape == ((17, 17) if disk_radius <= 8 else (21, 21))
    # imagecorruptions does not renormalise after antialiasing: disks touching the grid's
    # border (radius 8 and 10) gain mass from the reflect-101 border
    assert kernel.sum() == pytest.approx(1.0, abs=1e-9 if disk_radius < 8 else 0.02)
    assert np.allclose(kernel, kernel.T)
    assert np.allclose(kernel, kernel[::-1, ::-1])
    expected = np.stack([_direct_filter(x[..., d], kernel, "reflect") for d in range(3)], -1)
    out = corrupt(image, "defocus_blur", severity)
    assert np.abs(out.astype(int) - _to_uint8(expected)).max() <= 1
    assert np.mean(out != _to_uint8(expected)) < 1e-3


def test_brightness_contrast_and_noise_formulas():
    image = _test_image(12, 10)
    x = image / 255.0
    for severity in (1, 4):
        c = SEVERITY_CONSTANTS["brightness"][severity - 1]
        expected = np.empty_like(x)
        for index in np.ndindex(x.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*x[index])
            expected[index] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
        # equal to float round-off; the uint8 results may then differ by one where the value is
        # a tie (the brightest channel gains 255 c = 25.5 * severity grey levels)
        np.testing.assert_allclose(corruptions._brightness(x, c), expected, atol=1e-12)
        out = corrupt(image, "brightness", severity).astype(int)
        assert np.abs(out - _to_uint8(expected)).max() <= 1
        c = SEVERITY_CONSTANTS["contrast"][severity - 1]
        mean = x.mean(axis=(0, 1))
        np.testing.assert_array_equal(corrupt(image, "contrast", severity), _to_uint8((x - mean) * c + mean))
    grey = np.full((200, 200, 3), 128, np.uint8)
    for severity, c in enumerate(SEVERITY_CONSTANTS["gaussian_noise"], 1):
        noise = corrupt(grey, "gaussian_noise", severity, 3).astype(float) - 128
        clipped = np.mean(np.abs(noise) > 126)
        if clipped < 0.01:
            assert noise.std() == pytest.approx(255 * c, rel=0.03)
            assert abs(noise.mean()) < 1.0
    # the severities scale one noise field (common random numbers)
    low = corrupt(grey, "gaussian_noise", 1, 3).astype(float) - 128
    high = corrupt(grey, "gaussian_noise", 2, 3).astype(float) - 128
    assert np.corrcoef(low.ravel(), high.ravel())[0, 1] > 0.99


def test_summarize_table_and_csv(tmp_path):
    def metrics(ap):
        return {"AP": ap, "AP50": 2 * ap, "AP75": ap, "APs": 0.0, "APm": ap, "APl": ap}

    rows = {"low/clean": metrics(40.0)}
    for family, base in (("gaussian_noise", 30.0), ("contrast", 20.0)):
        for severity in (1, 3):
            rows[f"low/{family}/s{severity}"] = metrics(base - severity)
    rows = corruptions.summarize(rows)
    assert rows["low/gaussian_noise/mean"]["AP"] == pytest.approx(28.0)
    assert rows["low/contrast/mean"]["AP50"] == pytest.approx(36.0)
    assert rows["low/mPC"]["AP"] == pytest.approx(23.0)
    assert list(rows) == ["low/clean", "low/gaussian_noise/s1", "low/gaussian_noise/s3",
                          "low/gaussian_noise/mean", "low/contrast/s1", "low/contrast/s3",
                          "low/contrast/mean", "low/mPC"]
    table = corruptions.robustness_table(rows, title="t")
    lines = table.splitlines()
    assert lines[0] == "t" and "s1" in lines[1] and "s3" in lines[1] and "s2" not in lines[1]
    noise = next(line for line in lines if line.startswith("gaussian_noise")).split()
    assert noise[1:] == ["40.00", "29.00", "27.00", "28.00", "70.0"]
    assert lines[-1].split() == ["mPC", "40.00", "23.00", "57.5"]
    corruptions.write_csv(tmp_path / "r.csv", rows)
    with open(tmp_path / "r.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [(r["row"], r["family"], r["severity"]) for r in written][:2] == [("low", "clean", "0"),
                                                                           ("low", "gaussian_noise", "1")]
    assert written[-1]["family"] == "mPC" and float(written[-1]["rPC"]) == pytest.approx(57.5)


# ------------------------------------------------------------------ pipeline and evaluation
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from msad_tf.data.synthetic import CATEGORY_IDS, CLASS_NAMES, make_synthetic_dataset
    from msad_tf.evaluation import evaluator
    from msad_tf.training import runs
    from msad_tf.training.train import load_split

    root = tmp_path_factory.mktemp("corruptions")
    make_synthetic_dataset(root / "data", num_train=4, num_val=6, image_size=96, progress=False)
    run = write_confident_run(root, student_run_config(root), CATEGORY_IDS, CLASS_NAMES)
    config, model, _, _ = runs.load_run(run)
    short_side, max_side, stride = input_geometry(config, "low")
    results, _ = evaluator.predict_coco(
        model, load_split(config, config.data.val_split), short_side=short_side, max_side=max_side,
        shift=model.shift_for("low"), batch_size=4, pad_multiple=128, progress=False, stride=stride)
    best = {}
    for r in sorted(results, key=lambda r: -r["score"]):
        best.setdefault(r["image_id"], [])
        if len(best[r["image_id"]]) < 3:
            best[r["image_id"]].append(r)
    ann_file = config.data.ann_file(config.data.val_split)
    with open(ann_file) as handle:
        gt = json.load(handle)
    gt["annotations"] = [
        {"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"], "iscrowd": 0,
         "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3]}
        for i, r in enumerate(r for rs in best.values() for r in rs)
    ]
    with open(ann_file, "w") as handle:
        json.dump(gt, handle)
    return {"run": run, "config": config, "model": model, "dataset": load_split(config, config.data.val_split)}


def test_pipeline_hook_corrupts_the_original_image_before_resizing(tiny_run):
    from msad_tf.data import build_dataset
    from msad_tf.data.preprocess import normalize_image, pad_to_multiple, resize_image

    dataset = tiny_run["dataset"]
    corruption = Corruption("gaussian_noise", 4)
    kwargs = {"short_side": 128, "max_side": 128, "batch_size": 3, "pad_multiple": 128}
    clean = next(iter(build_dataset(dataset, **kwargs)))
    batch = next(iter(build_dataset(dataset, corruption=corruption.tf_apply, **kwargs)))
    for key in ("boxes", "classes", "image_ids", "scales", "image_sizes"):
        np.testing.assert_array_equal(batch[key].numpy(), clean[key].numpy())
    for b, record in enumerate(dataset.records[:3]):
        original = np.asarray(Image.open(record.path).convert("RGB"))
        resized, _ = resize_image(corruption.apply(original, record.image_id), 128, 128)
        expected = pad_to_multiple(normalize_image(resized)[None], 128)[0]
        np.testing.assert_allclose(batch["images"][b].numpy(), expected.numpy(), atol=1e-5)
    assert np.abs(batch["images"].numpy() - clean["images"].numpy()).mean() > 0.1
    with pytest.raises(ValueError, match="evaluation hook"):
        build_dataset(dataset, training=True, corruption=corruption.tf_apply, **kwargs)


def test_high_and_low_see_the_same_corrupted_originals(tiny_run):
    from msad_tf.evaluation.evaluator import evaluate_model

    model, dataset, config = tiny_run["model"], tiny_run["dataset"], tiny_run["config"]
    seen = {}
    corruption = Corruption("fog", 2)

    def recording(image, image_id):
        def record(x, i):
            out = corruption.apply(x, int(i))
            seen.setdefault(int(i), []).append((x.shape, out.tobytes()))
            return out

        return tf.numpy_function(record, [image, image_id], tf.uint8)

    for resolution in ("high", "low"):
        evaluate_model(model, dataset, config, resolution, progress=False, corruption=recording)
    assert sorted(seen) == sorted(r.image_id for r in dataset.records)
    for record in dataset.records:
        (shape_h, pixels_h), (shape_l, pixels_l) = seen[record.image_id]
        assert shape_h == shape_l == (record.height, record.width, 3)
        assert pixels_h == pixels_l


def test_evaluate_model_clean_equals_plain_and_corruption_lowers_ap(tiny_run):
    from msad_tf.evaluation.evaluator import evaluate_model

    model, dataset, config = tiny_run["model"], tiny_run["dataset"], tiny_run["config"]
    plain = evaluate_model(model, dataset, config, "low", progress=False)
    assert plain["AP"] > 50
    assert evaluate_model(model, dataset, config, "low", progress=False,
                          corruption=Corruption("contrast", 0)) == plain
    noisy = evaluate_model(model, dataset, config, "low", progress=False,
                           corruption=Corruption("gaussian_noise", 5))
    assert noisy["AP"] < plain["AP"]


def test_msad_evaluate_corruption_writes_table_json_csv_and_metrics(tiny_run, capsys, tmp_path):
    from msad_tf.cli import main

    run = tiny_run["run"]
    main(["evaluate", "--run", str(run), "--resolutions", "low", "--corruption", "gaussian_noise",
          "contrast", "--severity", "1", "5", "--quiet"])
    out = run / "eval_val_corruption_gaussian_noise+contrast_s15.json"
    rows = json.loads(out.read_text())
    families = [f"low/{f}/s{s}" for f in ("gaussian_noise", "contrast") for s in (1, 5)]
    assert set(rows) == {"low/clean", *families, "low/gaussian_noise/mean", "low/contrast/mean", "low/mPC"}
    clean = rows["low/clean"]["AP"]
    assert clean > 50
    assert rows["low/gaussian_noise/s5"]["AP"] < clean and rows["low/contrast/s5"]["AP"] < clean
    assert rows["low/mPC"]["AP"] < clean
    assert rows["low/gaussian_noise/mean"]["AP"] == pytest.approx(
        (rows["low/gaussian_noise/s1"]["AP"] + rows["low/gaussian_noise/s5"]["AP"]) / 2)
    printed = capsys.readouterr().out
    assert "gaussian_noise" in printed and "rPC%" in printed and "mPC" in printed
    with open(out.with_suffix(".csv")) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["val/low/contrast/s5"] == rows["low/contrast/s5"] and "val/low/mPC" in stored

    # every family, one severity, a chosen file
    target = tmp_path / "all.json"
    main(["evaluate", "--run", str(run), "--resolutions", "low", "--corruption", "all", "--severity", "3",
          "--max-images", "4", "--json", str(target), "--quiet"])
    rows = json.loads(target.read_text())
    assert {f"low/{f}/s3" for f in FAMILIES} <= set(rows) and target.with_suffix(".csv").is_file()


def test_msad_evaluate_corruption_errors(tiny_run, capsys):
    from msad_tf.cli import main

    run = str(tiny_run["run"])
    for argv, message in (
        (["--severity", "2"], "--severity needs --corruption"),
        (["--corruption", "fog", "--sweep", "1"], "--corruption and --sweep"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", "--run", run, *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", run, "--corruption", "snow"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", run, "--corruption", "fog", "--severity", "6"])
