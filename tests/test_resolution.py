"""msad_tf.resolution: the one place that decides resolution, branch and shift."""
import pytest

from conftest import tiny_model_config
from msad_tf.config import config_from_dict
from msad_tf.modeling.detector import FCOSDetector
from msad_tf.modeling.teacher import MultiScaleTeacher
from msad_tf.resolution import (
    branches_for,
    deploy_resolution,
    input_geometry,
    resolve_branch,
    shift_for,
)


def _config(**train):
    return config_from_dict({"model": {"k": 2}, "data": {"short_side": 128, "max_side": 160},
                             "train": train})


def test_geometry_of_each_resolution_and_operator():
    config = _config()
    assert input_geometry(config, "high") == (128, 160, 1)
    assert input_geometry(config, "low") == (128, 160, 2)
    config.eval.low_input = "resize"
    assert input_geometry(config, "low") == (64, 80, 1)
    with pytest.raises(ValueError, match="choose high or low"):
        input_geometry(config, "medium")


def test_shift_and_rows_of_single_aligned_and_teacher():
    single = FCOSDetector(tiny_model_config(), num_classes=2)
    aligned = FCOSDetector(tiny_model_config(), num_classes=2, train_mode="aligned")
    teacher = MultiScaleTeacher(tiny_model_config(), num_classes=2)
    assert [shift_for(m, "low") for m in (single, aligned, teacher)] == [0, 1, 1]
    assert [shift_for(m, "high") for m in (single, aligned, teacher)] == [0, 0, 0]
    assert branches_for(aligned, "low") == [("low", None)]
    assert branches_for(teacher, "high") == [("fused", "fused"), ("high@high", "high")]
    assert branches_for(teacher, "low") == [("low@low", "low")]
    assert teacher.inference_branches("high") == ("fused", "high")


def test_teacher_branch_defaults_and_errors():
    teacher = MultiScaleTeacher(tiny_model_config(), num_classes=2)
    assert resolve_branch(teacher, None, None) == ("fused", 0)
    assert resolve_branch(teacher, None, 1) == ("low", 1)
    assert resolve_branch(teacher, "high", None) == ("high", 0)
    assert resolve_branch(teacher, "low", None) == ("low", 1)
    with pytest.raises(ValueError, match="shift 0"):
        resolve_branch(teacher, "fused", 1)
    with pytest.raises(ValueError, match="choose one of fused, high, low"):
        resolve_branch(teacher, "mid", None)


def test_deploy_resolution_of_each_kind_of_run():
    model = FCOSDetector(tiny_model_config(), num_classes=2)
    assert deploy_resolution(model, _config(mode="student")) == "low"
    assert deploy_resolution(model, _config(mode="student", student_input="high")) == "high"
    assert deploy_resolution(model, _config(mode="single", input="low")) == "low"
    assert deploy_resolution(model, _config(mode="aligned")) == "high"
