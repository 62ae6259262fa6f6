"""Reports every signal it gets ("child got SIGUSR1"). TERM/INT/QUIT end it with CHILD_EXIT_ON_STOP
(default 0) unless CHILD_IGNORE_TERM=1, then it ignores them and runs until killed."""

import os
import signal
import sys
import time

EXIT_CODE = int(os.environ.get("CHILD_EXIT_ON_STOP", "0"))
IGNORE = os.environ.get("CHILD_IGNORE_TERM") == "1"
STOPPING = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


def handler(signum, frame):
    print(f"child got {signal.Signals(signum).name}", flush=True)
    if signum in STOPPING and not IGNORE:
        sys.exit(EXIT_CODE)


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, handler)
print(f"child ready pid={os.getpid()}", flush=True)
while True:
    time.sleep(0.05)
