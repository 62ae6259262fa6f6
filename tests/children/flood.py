"""Prints CHILD_LINES lines (default 1,000,000) as a logger would, one print() each, then
"flood done lines=N seconds=S" on stderr. Then exits 0, or with CHILD_WAIT=1 waits for SIGTERM."""

import os
import signal
import sys
import time

count = int(os.environ.get("CHILD_LINES", "1000000"))
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
start = time.perf_counter()
for i in range(count):
    print(f"INFO 05-09 10:00:00 [flood.py:1] flood line {i} of a reasonably long log message")
sys.stdout.flush()
elapsed = time.perf_counter() - start
print(f"flood done lines={count} seconds={elapsed:.4f}", file=sys.stderr, flush=True)
if os.environ.get("CHILD_WAIT") == "1":
    while True:
        time.sleep(0.05)
