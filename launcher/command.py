"""Run a short external command (npu-smi, bash sourcing set_env.sh) with a deadline.

On timeout the command's whole process group is killed: a hung npu-smi or a `set_env.sh` that starts
a child must not outlive the launcher's check. Acting part: starts processes, decides nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


class TimedOut(Exception):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        super().__init__(f"{argv[0]} did not finish within {timeout:g}s")


def run(argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> Completed:
    """Run `argv` to completion; raise TimedOut (after killing its process group) past `timeout`.

    OSError (program missing, not executable) propagates to the caller, which knows what it means."""
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so a timeout kills grandchildren too
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Not read again: a grandchild that left the group could hold the pipes open forever.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        raise TimedOut(argv, timeout) from None
    return Completed(
        proc.returncode,
        out.decode("utf-8", errors="replace"),
        err.decode("utf-8", errors="replace"),
    )
