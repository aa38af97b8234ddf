"""TensorFlow's native (C++) output, kept off a normal run's console in one place.

Some of TensorFlow's lines are written by its C++ runtime straight to file descriptors 1 and 2
(start-up notices before its logging is configured, the TFLite quantizer's
"fully_quantize: 0, inference_type: 6, ..." lines), so neither TF_CPP_MIN_LOG_LEVEL nor
Python's logging can hide them. These context managers redirect the descriptors themselves.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def native_output_held(fds=(1, 2)):
    """Hold what the native runtime writes to ``fds`` while the block runs: dropped when it
    succeeds, written to stderr (after the descriptors are restored) when it raises, so that a
    failure keeps its native diagnostics."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    failed = False
    with tempfile.TemporaryFile() as held:
        try:
            for fd in fds:
                os.dup2(held.fileno(), fd)
            yield
        except BaseException:
            failed = True
            raise
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if failed:
                held.seek(0)
                text = held.read().decode(errors="replace")
                if text.strip():
                    sys.stderr.write(text)
                    sys.stderr.flush()


def load_tensorflow_quietly(processes: int | None = None, initialize: bool = True) -> None:
    """Import TensorFlow and initialise its devices without its native start-up lines (oneDNN
    notice, no CUDA driver, cuInit failure on a CPU machine), its thread pools set for one of
    ``processes`` runs at once first (``msad_tf.cpu_threads``). ``initialize=False`` leaves the
    runtime unstarted: a multi-worker strategy must configure its collectives before it starts."""
    with native_output_held(fds=(2,)):
        import tensorflow as tf

        from msad_tf.cpu_threads import configure_threads

        configure_threads(processes)
        if initialize:
            tf.config.list_logical_devices()
