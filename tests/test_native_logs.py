"""native_output_held: native writes to file descriptors 1 and 2 are dropped on success and
replayed on stderr when the block raises."""
import os
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
from msad_tf.native_logs import native_output_held
fail = sys.argv[1] == "fail"
try:
    with native_output_held():
        os.write(1, b"native stdout line\\n")
        os.write(2, b"native stderr line\\n")
        if fail:
            raise RuntimeError("conversion failed")
except RuntimeError:
    os.write(2, b"caught\\n")
os.write(1, b"after\\n")
"""


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_native_output_is_dropped_on_success_and_replayed_on_failure(mode):
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "after\n"
    if mode == "ok":
        assert done.stderr == ""
    else:
        assert done.stderr == "native stdout line\nnative stderr line\ncaught\n"
