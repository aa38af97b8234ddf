"""cpu_threads: one place decides TensorFlow's thread pools, for this process and for the runs
trained at once in other processes."""
import json
from pathlib import Path

import pytest

from msad_tf.cpu_threads import SMALL_CPU, current_threads, thread_settings
from msad_tf.training.parallel import Task, run_in_processes


@pytest.mark.parametrize("cores, processes, expected", [
    (2, 1, (1, 2)),
    (2, 2, (1, 1)),
    (2, 3, (1, 1)),
    (4, 2, (1, 2)),
    (SMALL_CPU + 1, 1, (0, 0)),
    (64, 2, (0, 0)),
])
def test_small_cpus_get_one_thread_per_op_and_their_share_of_the_cores(cores, processes, expected):
    assert thread_settings(processes, cores=cores, env={}) == expected


def test_the_environment_decides_what_it_names():
    assert thread_settings(1, cores=2, env={"MSAD_THREADS": "default"}) == (0, 0)
    assert thread_settings(1, cores=2, env={"TF_NUM_INTRAOP_THREADS": "2"}) == (2, 2)
    assert thread_settings(1, cores=64, env={"TF_NUM_INTEROP_THREADS": "3"}) == (0, 3)
    assert thread_settings(None, cores=2, env={"MSAD_PROCESSES": "2"}) == (1, 1)
    assert thread_settings(None, cores=2, env={"MSAD_PROCESSES": ""}) == (1, 2)
    with pytest.raises(ValueError, match="MSAD_THREADS='one'"):
        thread_settings(1, cores=2, env={"MSAD_THREADS": "one"})


def test_the_test_process_runs_with_the_settings_it_would_get_from_the_cli(monkeypatch):
    monkeypatch.delenv("MSAD_PROCESSES", raising=False)
    assert current_threads() == thread_settings(1)


def write_threads(path):
    Path(path).write_text(json.dumps(current_threads()))


def test_each_process_of_a_parallel_run_gets_its_share_and_its_task_environment(tmp_path, monkeypatch):
    for name in ("MSAD_THREADS", "MSAD_PROCESSES", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    tasks = [Task("a", write_threads, (tmp_path / "a",)), Task("b", write_threads, (tmp_path / "b",)),
             Task("c", write_threads, (tmp_path / "c",), env={"MSAD_THREADS": "default"})]
    assert run_in_processes(tasks, jobs=2, progress=False, poll=0.1) == {"a": 0, "b": 0, "c": 0}
    for key in ("a", "b"):
        assert tuple(json.loads((tmp_path / key).read_text())) == thread_settings(2)
    assert tuple(json.loads((tmp_path / "c").read_text())) == (0, 0)


STARTUP_THEN_STRATEGY = """
import json, os, sys
from msad_tf.cli import start_tensorflow
from msad_tf.cpu_threads import current_threads
start_tensorflow(verbose=False)
from msad_tf.training.strategy import multi_worker_strategy
strategy = multi_worker_strategy()
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "threads": current_threads()}))
"""


def test_a_multi_worker_command_can_still_build_its_strategy_after_start_up(tmp_path):
    """Every command starts TensorFlow first (threads, quiet native lines). A worker's
    MultiWorkerMirroredStrategy must configure collectives before the runtime starts, so with
    TF_CONFIG set start-up leaves it unstarted ("Collective ops must be configured at program
    startup" otherwise); the worker still gets its share of the cores (MSAD_PROCESSES)."""
    import os
    import subprocess
    import sys

    from msad_tf.training.launch import free_ports, tf_config

    env = dict(os.environ, TF_CONFIG=tf_config([f"127.0.0.1:{free_ports(1)[0]}"], 0), MSAD_PROCESSES="2",
               TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("MSAD_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", STARTUP_THEN_STRATEGY], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 1
    assert tuple(result["threads"]) == thread_settings(2, env={})
