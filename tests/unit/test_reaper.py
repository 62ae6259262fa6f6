"""launcher.reaper with real processes: statuses reach their watcher, orphans are reaped, trees die."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import psutil
import uvloop

from launcher.reaper import Reaper, exit_code, signal_name

SH = shutil.which("sh") or "/bin/sh"


def spawn(script: str) -> int:
    # posix_spawn, not Popen: only the Reaper may wait for these children.
    return os.posix_spawn(SH, [SH, "-c", script], dict(os.environ), setpgroup=0)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def test_exit_code_and_signal_names():
    assert exit_code(0) == 0
    assert exit_code(255) == 255
    assert exit_code(-signal.SIGKILL) == 137
    assert exit_code(-signal.SIGTERM) == 143
    assert signal_name(signal.SIGUSR1) == "SIGUSR1"
    assert signal_name(250) == "signal 250"


def test_each_status_reaches_its_watcher_and_others_are_reaped_as_orphans():
    async def scenario() -> tuple[int, int]:
        reaper = Reaper()
        watched = spawn("exit 7")
        future = reaper.watch(watched)
        other = spawn("kill -SEGV $$")
        while not future.done() or psutil.pid_exists(other):
            reaper.reap()
            await asyncio.sleep(0.01)
        return future.result(), reaper.orphans_reaped

    status, orphans = run(scenario())
    assert status == 7
    # At least `other`; pytest may have more children of its own (from earlier tests) ending meanwhile.
    assert orphans >= 1


def test_kill_all_kills_the_tree_and_the_group_and_verifies():
    async def scenario() -> tuple[list[int], list[psutil.Process], list[int]]:
        reaper = Reaper()
        leader = spawn("trap '' TERM; sleep 1000 & sleep 1000 & wait")
        exited = reaper.watch(leader)
        tree: list[int] = []
        while len(tree) < 2:
            tree = [p.pid for p in psutil.Process(leader).children()]
            await asyncio.sleep(0.01)
        killed, survivors = await reaper.kill_all(leader, timeout=10)
        assert exited.done() and exited.result() == -signal.SIGKILL
        return killed, survivors, [leader, *tree]

    killed, survivors, pids = run(scenario())
    assert survivors == []
    assert set(pids) <= set(killed)
    # The test process is no subreaper: the orphaned sleeps may still be zombies for init to reap.
    assert not any(running(pid) for pid in pids)


def test_kill_all_with_nothing_to_kill_returns_at_once():
    assert run(Reaper().kill_all(None, timeout=1)) == ([], [])
