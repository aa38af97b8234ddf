"""training.parallel: tasks in processes, each once what it needs exists; failures propagate."""
import time
from pathlib import Path

import pytest

from msad_tf.training.parallel import Task, run_in_processes


def write_after(path, seconds):
    time.sleep(seconds)
    Path(path).write_text(f"{time.time()}")
    print("wrote", path)


def fail():
    raise SystemExit(5)


def write_threads(path):
    from msad_tf.cpu_threads import current_threads

    Path(path).write_text(",".join(map(str, current_threads())))


def test_a_task_starts_once_what_it_needs_exists_and_logs_go_to_files(tmp_path):
    teacher, student, other = tmp_path / "teacher", tmp_path / "student", tmp_path / "other"
    tasks = [
        Task("student", write_after, (student, 0.0), log=tmp_path / "student.log", needs="teacher",
             ready=teacher.is_file),
        Task("teacher", write_after, (teacher, 1.0), log=tmp_path / "teacher.log"),
        Task("other", write_after, (other, 0.0), log=tmp_path / "other.log"),
    ]
    done = {}
    codes = run_in_processes(tasks, jobs=2, progress=False, poll=0.1,
                             on_done=lambda key, code, seconds: done.__setitem__(key, (code, seconds)))
    assert codes == {"teacher": 0, "student": 0, "other": 0}
    assert set(done) == set(codes) and done["teacher"][0] == 0 and done["teacher"][1] >= 1.0
    assert float(student.read_text()) >= float(teacher.read_text())
    assert "wrote" in (tmp_path / "student.log").read_text()


def test_a_slow_on_done_starts_what_became_ready_first(tmp_path):
    """on_done (the reproduction's report) may take minutes: the task that the finished one
    made ready starts before it, so no slot waits on the report."""
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    tasks = [Task("teacher", write_after, (teacher, 0.0)),
             Task("student", write_after, (student, 0.0), needs="teacher", ready=teacher.is_file)]
    seen = {}

    def on_done(key, code, seconds):
        if key == "teacher":
            deadline = time.time() + 60
            while not student.is_file() and time.time() < deadline:
                time.sleep(0.1)
            seen["student written during on_done"] = student.is_file()

    run_in_processes(tasks, jobs=1, progress=False, poll=0.1, on_done=on_done)
    assert seen == {"student written during on_done": True}


def test_a_failed_need_skips_its_dependents(tmp_path):
    tasks = [
        Task("teacher", fail, log=tmp_path / "teacher.log"),
        Task("student", write_after, (tmp_path / "student", 0.0), needs="teacher",
             ready=(tmp_path / "never").is_file),
    ]
    codes = run_in_processes(tasks, jobs=2, progress=False, poll=0.1)
    assert codes == {"teacher": 5, "student": -1}
    assert not (tmp_path / "student").exists()


def test_a_task_that_can_never_start_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="never start"):
        run_in_processes([Task("student", write_after, (tmp_path / "s", 0.0), ready=lambda: False)], jobs=2,
                         progress=False, poll=0.1)


def test_a_target_from_a_module_that_imports_tensorflow_starts_quietly(tmp_path, monkeypatch, capfd):
    """The child imports the target's module only after TensorFlow has loaded quietly, so a
    module importing TensorFlow at its top (here TensorFlow's own) adds no native start-up
    line ("failed call to cuInit", "Could not find cuda drivers") to the console (the child
    unpickles its target before its output goes to the task's log) nor to the log."""
    import tensorflow as tf

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    log = tmp_path / "tf.log"
    codes = run_in_processes([Task("tf", tf.config.list_logical_devices, (), log=log)], jobs=1, progress=False,
                             poll=0.1)
    assert codes == {"tf": 0}
    console = capfd.readouterr()
    text = console.out + console.err + (log.read_text() if log.is_file() else "")
    assert "cuInit" not in text and "cuda" not in text and "oneDNN" not in text, text


@pytest.mark.parametrize("count", [1, 2])
def test_each_task_gets_the_threads_of_the_runs_at_once(tmp_path, count):
    """With --jobs 2, two tasks get one share each, and a lone task gets both shares (the thread
    pools are decided before TensorFlow starts and cannot grow later)."""
    from msad_tf.cpu_threads import thread_settings

    tasks = [Task(f"t{i}", write_threads, (tmp_path / f"t{i}",)) for i in range(count)]
    assert run_in_processes(tasks, jobs=2, progress=False, poll=0.1) == {f"t{i}": 0 for i in range(count)}
    expected = ",".join(map(str, thread_settings(count)))
    for i in range(count):
        assert (tmp_path / f"t{i}").read_text() == expected
