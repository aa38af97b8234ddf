"""One train step under MirroredStrategy on 2 logical CPUs equals the single-replica step."""
import pytest

from conftest import assert_two_replicas_match_one, tiny_model_config, toy_batch
from msad_tf.modeling.detector import FCOSDetector


@pytest.mark.parametrize("mode", ["single", "aligned"])
def test_two_replicas_match_one(mode):
    logs = assert_two_replicas_match_one(
        lambda: FCOSDetector(tiny_model_config(), num_classes=3, train_mode=mode), toy_batch(batch=4, size=128)
    )
    assert "loss_high" in logs and ("loss_low" in logs) == (mode == "aligned")
