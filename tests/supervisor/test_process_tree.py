"""PID 1 duties: orphans are adopted and reaped, and nothing vLLM started outlives it."""

from __future__ import annotations

import ast
import signal

import psutil

from .helpers import child, wait_until


def tree_pids(launcher) -> list[int]:
    line = launcher.wait_for_line("tree pids=")["event"]
    return ast.literal_eval(line.split("tree pids=", 1)[1])


def gone(pid: int) -> bool:
    """Neither running nor a zombie: reaped."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


def test_orphans_are_adopted_and_the_whole_tree_is_killed_on_stop(run_launcher):
    launcher = run_launcher(child("tree.py"))
    grandchild, own_group, orphan = tree_pids(launcher)
    assert psutil.Process(orphan).ppid() == launcher.pid  # the launcher is a child subreaper
    assert len(launcher.leftovers()) == 4  # vLLM, two grandchildren, the orphan
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0
    killed = launcher.wait_for("leftover_processes_killed")["pids"]
    assert sorted(killed) == sorted([grandchild, own_group, orphan])
    assert all(gone(pid) for pid in (grandchild, own_group, orphan))
    assert launcher.leftovers() == []


def test_a_crash_leaves_no_process_and_keeps_its_status(run_launcher):
    launcher = run_launcher(child("tree.py"), env={"CHILD_TREE_EXIT": "3"}, supervisor={"restart": "never"})
    pids = tree_pids(launcher)
    assert launcher.wait_exit() == 3
    assert launcher.wait_for("child_exited")["status"] == 3
    assert all(gone(pid) for pid in pids)
    assert launcher.leftovers() == []


def test_orphans_are_reaped_while_vllm_runs(run_launcher, tmp_path):
    exit_file = tmp_path / "orphan-may-exit"
    launcher = run_launcher(child("tree.py"), env={"CHILD_ORPHAN_EXIT_FILE": str(exit_file)})
    *_, orphan = tree_pids(launcher)
    assert psutil.Process(orphan).ppid() == launcher.pid
    exit_file.touch()
    # The orphan ends; only its new parent, the launcher, can reap the zombie.
    wait_until(lambda: gone(orphan), what="the orphan's zombie to be reaped")

    def zombies() -> list[psutil.Process]:
        return [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.status() == "zombie"]

    assert zombies() == []
    assert not launcher.find("child_exited")  # vLLM's own status was not taken by the orphan reaping
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0
    assert launcher.wait_for("child_exited")["reason"] == "stopped"
