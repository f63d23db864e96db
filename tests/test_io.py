"""Atomic writes: the umask decides the mode, an interrupted write leaves nothing behind for long; the run folder
is claimed atomically, so two trainings started together never share one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from maskcls.checkpoint import claim_run_dir
from maskcls.io import STALE_AFTER_S, atomic_path, atomic_write_text, temp_target

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back after."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "submission.csv"
    atomic_write_text(path, "ImageID,ans\n")
    assert path.stat().st_mode & 0o777 == mode
    atomic_write_text(path, "ImageID,ans\na.jpg,1\n")  # a rewrite too
    assert path.stat().st_mode & 0o777 == mode


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "best.pt"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half a checkp")
        raise RuntimeError("killed")
    assert not path.exists() and _temps(tmp_path) == []


def test_the_next_write_removes_what_a_killed_write_left(tmp_path):
    """A process killed mid-write (SIGKILL: no cleanup runs) leaves its temporary file; the next run's write
    into that folder removes it, and a live writer's fresh one stays."""
    path = tmp_path / "last.pt"
    killed = ("import os, signal, sys\nfrom maskcls.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", killed, str(path)], env=env).returncode == -signal.SIGKILL
    leftover, = _temps(tmp_path)
    assert leftover.startswith(".last.pt.") and leftover.endswith(".tmp.pt")  # recognisable per target
    assert temp_target(tmp_path / leftover) == path and temp_target(path) is None
    busy = tmp_path / f".best.pt.{os.getpid()}-0123abcd.tmp.pt"  # this process is alive and wrote it just now
    busy.write_bytes(b"being written")

    atomic_write_text(path, "epoch 2")
    assert path.read_text() == "epoch 2"
    assert _temps(tmp_path) == [busy.name]


def test_a_temporary_file_untouched_for_long_is_stale_even_if_its_pid_lives(tmp_path):
    """A pid can be reused by another process: age alone also makes a leftover stale."""
    old = tmp_path / f".results.csv.{os.getpid()}-0123abcd.tmp.csv"
    old.write_text("abandoned")
    past = time.time() - 2 * STALE_AFTER_S
    os.utime(old, (past, past))
    atomic_write_text(tmp_path / "results.csv", "epoch,val_f1\n")
    assert _temps(tmp_path) == []


def test_trainings_started_together_claim_different_run_folders(tmp_path):
    racers = 8
    start, claimed = threading.Barrier(racers), []

    def race():
        start.wait()
        claimed.append(claim_run_dir(tmp_path, "mask"))

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == racers and all(p.is_dir() for p in claimed)
    assert sorted(p.name for p in claimed) == sorted(["exp", *(f"exp{i}" for i in range(2, racers + 1))])


def test_a_named_run_reuses_its_folder_and_an_unnamed_one_skips_taken_names(tmp_path):
    (tmp_path / "age" / "exp").mkdir(parents=True)
    (tmp_path / "age" / "exp2").write_text("a file takes the name too")
    assert claim_run_dir(tmp_path, "age") == tmp_path / "age" / "exp3"
    assert claim_run_dir(tmp_path, "age", "lr3e-4") == tmp_path / "age" / "lr3e-4"
    assert claim_run_dir(tmp_path, "age", "lr3e-4") == tmp_path / "age" / "lr3e-4"  # named: the user's choice
