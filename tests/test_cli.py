"""End to end through the `msad` command: dataset -> train -> evaluate -> predict, on a tiny model."""
import json

import pytest
from PIL import Image

from msad_tf.cli import main

TINY = [
    "model.backbone=resnet_tiny", "model.width=0.25", "model.backbone_weights=resnet_tiny_w0.25_synth",
    "model.fpn_channels=16", "model.head_convs=1",
    "model.gn_groups=4", "model.size_ranges=[[0,8],[8,16],[16,32],[32,64],[64,100000]]",
    "data.short_side=128", "data.max_side=128", "train.batch_size=4", "train.epochs=1", "train.epochs_scale=null",
    "train.steps_per_epoch=2", "train.warmup_steps=1", "eval.batch_size=8", "train.eval_every=1",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    main(["make-dataset", "--out", str(data), "--num-train", "8", "--num-val", "8",
          "--image-size", "128", "--quiet"])
    run = root / "run"
    main(["train", "--config", "configs/demo.yaml", "--run-dir", str(run), "--quiet",
          "--set", f"data.root={data}", *sum((["--set", s] for s in TINY), [])])
    return data, run


def test_train_writes_a_complete_run_dir(tiny_run):
    _, run = tiny_run
    for name in ("config.yaml", "categories.json", "model.weights.h5", "history.csv", "metrics.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "epoch_001.weights.h5").is_file()
    assert any((run / "logs").rglob("events.out.tfevents*"))
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "val_AP", "val_AP50", "val_AP_low"} <= set(header)
    categories = json.loads((run / "categories.json").read_text())
    assert categories["ids"][0] == 1 and len(categories["ids"]) == len(categories["names"])


def test_evaluate_prints_table_and_writes_json(tiny_run, capsys):
    _, run = tiny_run
    out = run / "eval.json"
    main(["evaluate", "--run", str(run), "--json", str(out), "--quiet"])
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"high", "low"}
    assert set(metrics["high"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0.0 <= v <= 100.0 for row in metrics.values() for v in row.values())
    assert "AP50" in capsys.readouterr().out


def test_predict_writes_json_and_png_in_original_pixels(tiny_run, tmp_path):
    data, run = tiny_run
    source = sorted((data / "val").iterdir())[0]
    big = tmp_path / "big.png"
    Image.open(source).convert("RGB").resize((256, 256)).save(big)
    rgba = tmp_path / "rgba.png"
    Image.open(source).convert("RGBA").save(rgba)
    missing = tmp_path / "missing.png"
    main(["predict", "--run", str(run), str(big), str(rgba), str(missing), "--out", str(tmp_path / "pred"),
          "--score-threshold", "0.0"])
    detections = json.loads((tmp_path / "pred" / "big.json").read_text())
    assert (tmp_path / "pred" / "big.png").is_file() and (tmp_path / "pred" / "rgba.png").is_file()
    assert Image.open(tmp_path / "pred" / "big.png").size == (256, 256)
    for det in detections:
        x, y, w, h = det["bbox"]
        assert -0.01 <= x and x + w <= 256.01 and -0.01 <= y and y + h <= 256.01
        assert det["category_id"] in json.loads((run / "categories.json").read_text())["ids"]


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "configs/demo.yaml", "--set", "train.epoch=1"])
    assert exit_info.value.code == 2
    assert "unknown key 'epoch'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path)])
    assert "run directory" in capsys.readouterr().err


def test_anchors_reports_coverage_of_the_split(tiny_run, tmp_path, capsys):
    from msad_tf.config import load_config
    from msad_tf.losses.retinanet import anchor_coverage
    from msad_tf.modeling.retinanet_detector import target_spec_from

    data, _ = tiny_run
    out = tmp_path / "anchors.json"
    main(["anchors", "--config", "configs/demo.yaml", "--set", f"data.root={data}", "--sizes", "1", "4",
          "--split", "val", "--json", str(out), "--quiet"])
    assert "anchor_size" in capsys.readouterr().out
    coverage = json.loads(out.read_text())["coverage"]
    annotations = json.loads((data / "annotations" / "instances_val.json").read_text())["annotations"]
    # 128-px images at short_side 128: the pipeline leaves the boxes as annotated
    boxes = [[y, x, y + h, x + w] for x, y, w, h in (a["bbox"] for a in annotations)]
    for size in ("1.0", "4.0"):
        config = load_config("configs/demo.yaml", [f"data.root={data}", f"model.anchor_size={size}"])
        expected = anchor_coverage(boxes, (128, 128), target_spec_from(config.model))
        assert coverage[size]["boxes"] == len(boxes) > 0
        for key in ("covered", "mean_best_iou", "positives_per_box"):
            assert coverage[size][key] == pytest.approx(expected[key], abs=1e-5)
    assert coverage["1.0"]["positives_per_box"] < coverage["4.0"]["positives_per_box"]
