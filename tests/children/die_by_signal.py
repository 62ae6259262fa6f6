"""Kills itself with signal CHILD_SIGNAL (a number), the way a crash or the OOM killer would."""

import os
import signal

signum = int(os.environ["CHILD_SIGNAL"])
print(f"die_by_signal: dying by {signum}", flush=True)
if signum not in (signal.SIGKILL, signal.SIGSTOP):
    signal.signal(signum, signal.SIG_DFL)  # Python turns some (SIGINT) into exceptions
os.kill(os.getpid(), signum)
signal.pause()
