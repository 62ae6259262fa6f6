"""PID 1 duties: adopt orphans, collect every exit status, and kill a whole process tree.

The launcher is the only waiter for its children. asyncio's child watchers, `Popen.wait()` and uvloop's
subprocess support are never used: a second waiter could steal vLLM's exit status, and `waitpid(-1)`
here would steal theirs. So one `Reaper` calls `waitpid(-1, WNOHANG)` whenever SIGCHLD arrives and
hands each status to whoever watches that pid (vLLM's main process); other pids are orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Iterable, Sequence

import psutil

from launcher.logs import get_logger

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def become_subreaper() -> bool:
    """Make orphans of our descendants re-parent to us instead of to the real PID 1.

    Without it, vLLM's engine-core and worker processes that outlive the API server (or a double-forked
    helper) would escape both the reaping and the final tree kill when the launcher is not PID 1.
    """
    if os.getpid() == 1:
        return True  # PID 1 already inherits every orphan in its namespace
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # not Linux, or no prctl symbol
        return False


def exit_code(returncode: int) -> int:
    """The status a shell would report: the exit status, or 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def reap_all() -> list[tuple[int, int]]:
    """Collect every ended child: (pid, returncode), returncode negative for death by signal."""
    ended: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children at all
            break
        if pid == 0:  # children exist, none has ended
            break
        ended.append((pid, os.waitstatus_to_exitcode(status)))
    return ended


def descendants() -> list[psutil.Process]:
    """Our whole process tree below us: vLLM and everything it started, plus orphans re-parented to us."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group `pgid` (zombies count until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just isn't ours to signal
    return True


def subtrees(roots: Iterable[psutil.Process]) -> set[int]:
    """The pids of `roots` that still run and of all their descendants."""
    pids: set[int] = set()
    for root in roots:
        try:
            if root.is_running():  # compares the start time too: a reused pid is not the root
                pids.add(root.pid)
                pids.update(child.pid for child in root.children(recursive=True))
        except psutil.Error:
            continue
    return pids


def group_members(pgid: int) -> list[psutil.Process]:
    """The processes of group `pgid` that still run. Zombies are left out: they hold no memory, and one
    whose parent is not us (no subreaper) is not ours to reap, so waiting for it could take long."""
    if not group_alive(pgid):  # one syscall; the scan below only when something is left
        return []
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return _alive(members)


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    left = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            left.append(proc)
    return left


class Reaper:
    """Owns `waitpid`: resolves a future per watched pid, reaps orphans silently.

    `spare`: processes whose trees `kill_all` leaves alone (a multi-node leader's Ray head, which outlives
    each vLLM it serves and is stopped by its owner after the supervisor is done).
    """

    def __init__(self, spare: Sequence[psutil.Process] = ()) -> None:
        self._watched: dict[int, asyncio.Future[int]] = {}
        self.orphans_reaped = 0
        self._spare = list(spare)
        self._log = get_logger()

    def watch(self, pid: int) -> asyncio.Future[int]:
        """A future resolved with pid's returncode once it has been reaped.

        Call it right after the fork, before yielding to the event loop, so no SIGCHLD can be missed.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watched[pid] = future
        return future

    def reap(self) -> None:
        for pid, returncode in reap_all():
            future = self._watched.pop(pid, None)
            if future is None:
                self.orphans_reaped += 1
                self._log.debug("orphan_reaped", orphan_pid=pid, returncode=returncode)
            elif not future.done():
                future.set_result(returncode)

    async def kill_all(self, pgid: int | None, timeout: float = 5.0) -> tuple[list[int], list[psutil.Process]]:
        """SIGKILL every descendant and every member of `pgid`, reap them, and verify none is left.

        Several rounds, because a process can fork between our listing and our kill; each round lists
        the tree again and kills the group again. Returns the pids it killed, and the processes that
        survived `timeout` (uninterruptible sleep in a driver, for example) so the caller can report them.
        """
        deadline = time.monotonic() + timeout
        killed: list[int] = []
        while True:
            self.reap()
            procs = _alive(descendants())
            if pgid is not None:
                known = {proc.pid for proc in procs}
                procs += [proc for proc in group_members(pgid) if proc.pid not in known]
            if self._spare:
                spared = subtrees(self._spare)
                procs = [p for p in procs if p.pid not in spared]
            if not procs:
                return killed, []
            if time.monotonic() >= deadline:
                return killed, procs
            for proc in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGKILL)
                    if proc.pid not in killed:
                        killed.append(proc.pid)
            if pgid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            # Dying takes the kernel a moment; SIGCHLD also triggers reap(), this is the fallback pace.
            await asyncio.sleep(0.01)
