"""One trainer per run folder, and a model written only by the run that owns it (units).

The orphaned trainer itself, with real processes, is in tests/faults/test_orphan_trainer.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dspo.training.guards import Preempted
from dspo.training.job_watch import JobWatch, is_launcher, parent_of
from dspo.training.run_lock import LOCK, RunConflict, RunLock, held, run_record, write_model

RECORD = "dspo_config.json"
HERE = JobWatch(links=(os.getppid(),))


def model_writer(text: str):
    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "weights").write_text(text)

    return write


def test_a_second_trainer_on_the_folder_is_refused_naming_it_and_the_holder(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with RunLock(run, HERE) as first:
        with pytest.raises(RunConflict) as refused, RunLock(run, HERE):
            pass
        message = str(refused.value)
        assert f"{run} is in use by another trainer: pid {os.getpid()}" in message
        assert f"job pid {os.getppid()}" in message
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
        assert first.lost() == ""
    with RunLock(run, HERE):  # released with its holder
        pass


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    """A holder killed outright leaves the file, not the lock."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from dspo.training.run_lock import RunLock;"
            "from dspo.training.job_watch import JobWatch; lock = RunLock(Path(sys.argv[1]), "
            "JobWatch.start()).__enter__(); print('held', flush=True); time.sleep(600)",
            str(tmp_path / "run"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(RunConflict, match=f"pid {holder.pid} on"), RunLock(tmp_path / "run", HERE):
        pass
    holder.kill()
    holder.wait()
    with RunLock(tmp_path / "run", HERE) as lock:
        assert lock.lost() == ""


def test_the_model_is_put_in_place_whole_with_the_run_recorded(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("an older run's")
    with RunLock(tmp_path / "run", HERE) as lock:
        write_model(out, lock, RECORD, model_writer("this run's"))
        assert run_record(lock)["run"]["pid"] == os.getpid()
    assert (out / "weights").read_text() == "this run's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]


def test_a_newer_runs_model_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with RunLock(tmp_path / "run", HERE) as lock:
        out.mkdir()
        newer = {"run": {"pid": 4242, "started": lock.started + 10}}
        (out / RECORD).write_text(json.dumps(newer))
        with pytest.raises(RunConflict, match="run that started later \\(pid 4242\\)"):
            write_model(out, lock, RECORD, model_writer("this run's"))
    assert sorted(p.name for p in out.iterdir()) == [RECORD]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]


def test_a_run_whose_lock_file_was_replaced_writes_no_model(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run", HERE) as lock:
        (tmp_path / "run" / LOCK).unlink()
        with RunLock(tmp_path / "run", HERE):  # another trainer's lock on a new file
            assert "was removed or replaced" in lock.lost()
            with pytest.raises(RunConflict, match="is not written"):
                write_model(tmp_path / "model", lock, RECORD, model_writer("x"))
    assert not (tmp_path / "model").exists()


def test_a_run_whose_job_is_gone_writes_no_model(tmp_path: Path) -> None:
    gone = JobWatch(links=(os.getppid() + 1,))  # not this process's parent (any more)
    assert f"pid {os.getppid() + 1}) is gone" in gone.gone()
    assert HERE.gone() == ""
    with RunLock(tmp_path / "run", gone) as lock, pytest.raises(Preempted, match="is gone"):
        write_model(tmp_path / "model", lock, RECORD, model_writer("x"))
    assert not (tmp_path / "model").exists()


def test_launchers_are_known_by_their_command_line() -> None:
    assert is_launcher(
        ["/env/bin/python3", "/env/bin/accelerate", "launch", "-m", "dspo.cli.commands"]
    )
    assert is_launcher(["/env/bin/torchrun", "--nproc-per-node", "2", "x.py"])
    # The train rule's own launcher (rules/train.smk).
    assert is_launcher(["/env/bin/python3", "-m", "dspo.training.launch", "--processes", "2"])
    assert is_launcher(["python", "-m", "torch.distributed.run", "x.py"])
    assert not is_launcher(["/env/bin/python3", "/env/bin/snakemake", "--cores", "2"])
    assert not is_launcher(["/bin/bash", "-c", "exec env dspo train"])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_parent_of_a_process_is_read_from_proc() -> None:
    assert parent_of(os.getpid()) == os.getppid()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert parent_of(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait()


def test_only_the_first_process_of_a_launch_holds_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under accelerate launch or torchrun each process has a RANK; rank 0 takes the lock."""
    with held(tmp_path / "run", HERE) as lock:
        assert isinstance(lock, RunLock)
        monkeypatch.setenv("RANK", "1")
        with held(tmp_path / "run", HERE) as other:  # no conflict: it takes none
            assert other is None
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunConflict), held(tmp_path / "run", HERE):
            pass
