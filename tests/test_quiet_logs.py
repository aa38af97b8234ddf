"""Quiet logs: a normal `msad train` run prints no native TensorFlow ERROR line on stderr.

Native lines cannot be seen in-process (TensorFlow writes them to file descriptor 2 once per
process), so the command runs in a subprocess with oneDNN on (TensorFlow's default on x86).
"""
import os
import re
import subprocess
import sys

from conftest import tiny_train_config

# absl's prefix of native ERROR and FATAL lines: "E0000 00:00:1796203986.927896   17561 util.cc:131] ..."
NATIVE_ERROR = re.compile(r"^[EF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\]", re.MULTILINE)


def test_train_and_export_stderr_have_no_backend_noise(tmp_path, tiny_data):
    """One aligned (high + low branch) training epoch of 2 steps: stderr holds the run's INFO
    lines and progress, and no "E0000 ... oneDNN supports DT_INT32 only on platforms with AVX-512"
    (the FPN upsampling's gradient once had an int32 Transpose, msad_tf/modeling/fpn.py) nor any
    other native ERROR line. Its export then logs none of TensorFlow's own INFO lines (the
    SavedModel writer's "Function `_serve_images` contains input name(s) resource ..."), and its
    int8 TFLite export none of the quantizer's native "fully_quantize: 0, ..." lines."""
    config_path = tmp_path / "tiny.yaml"
    tiny_train_config(tiny_data, mode="aligned", epochs=1, steps_per_epoch=2, backup_every=0).save(config_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_VMODULE")}
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    command = [sys.executable, "-m", "msad_tf.cli", "train", "--config", str(config_path),
               "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training FCOSDetector (aligned)" in done.stderr  # the run's own log lines do reach stderr
    assert "oneDNN supports" not in done.stderr, done.stderr[-3000:]
    assert not NATIVE_ERROR.findall(done.stderr), NATIVE_ERROR.findall(done.stderr)

    export = [sys.executable, "-m", "msad_tf.cli", "export", "--run", str(tmp_path / "run"),
              "--out", str(tmp_path / "exported")]
    done = subprocess.run(export, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "exported").is_dir()
    assert "contains input name(s)" not in done.stderr, done.stderr[-3000:]
    assert not re.findall(r"^INFO[ :](tensorflow|absl)", done.stderr, re.MULTILINE), done.stderr[-3000:]
    assert not NATIVE_ERROR.findall(done.stderr), NATIVE_ERROR.findall(done.stderr)

    done = subprocess.run(export + ["--format", "tflite", "--quantize", "int8", "--representative-images", "4"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "exported").rglob("*.tflite"))
    noise = done.stdout + done.stderr
    assert "fully_quantize" not in noise and "inference_type" not in noise, noise[-3000:]
    assert not NATIVE_ERROR.findall(noise), NATIVE_ERROR.findall(noise)
