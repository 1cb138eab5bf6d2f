"""One process per run folder (an flock held while writing), and fresh run folders chosen without races."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from metadg.engine.run_folder import FolderInUse, RunFolderLock, unique_dir
from hostile import cli


def _hold(folder: str, ready, release) -> None:
    with RunFolderLock(folder):
        ready.set()
        release.wait(30)


def test_a_second_process_is_refused_naming_the_holder_and_the_lock_ends_with_it(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path / "run"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(FolderInUse, match=rf"run: in use by another metadg process \(pid {holder.pid}\)"):
            with RunFolderLock(tmp_path / "run"):
                pass
    finally:
        release.set()
        holder.join(30)
    with RunFolderLock(tmp_path / "run"):  # released when the holder ended
        pass


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    code = ("import sys, time; from metadg.engine.run_folder import RunFolderLock\n"
            "with RunFolderLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse):
            RunFolderLock(tmp_path / "run").__enter__()
    finally:
        proc.kill()
        proc.wait()
    with RunFolderLock(tmp_path / "run"):
        pass


def test_resuming_a_folder_in_use_is_a_one_line_refusal(tmp_path, tiny_config, capsys):
    import yaml

    run = tmp_path / "runs" / "busy"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config))
    with RunFolderLock(run):
        status, _, err = cli(capsys, "run", str(run))
    assert status == 1 and "in use by another metadg process" in err and str(run) in err


def _claim(root: str, queue) -> None:
    queue.put(str(unique_dir(Path(root), "exp")))


def test_fresh_run_folders_are_distinct_under_concurrency(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), queue)) for _ in range(6)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    assert len(set(got)) == 6 and all(Path(g).is_dir() for g in got)
    assert sorted(Path(g).name for g in got) == ["exp", *(f"exp-{i}" for i in range(1, 6))]
