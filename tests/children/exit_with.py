"""Says CHILD_SAY (lines, on stderr) and exits with CHILD_EXIT_CODE. Ignores its arguments (vLLM flags)."""

import os
import sys
import time

for line in os.environ.get("CHILD_SAY", "").splitlines():
    print(line, file=sys.stderr)
# The wall-clock moment of the crash, for bench_supervisor's crash-to-restart latency.
print(f"exit_with: exiting with {os.environ.get('CHILD_EXIT_CODE', '1')} at {time.time():.6f}", flush=True)
sys.stderr.flush()
sys.exit(int(os.environ.get("CHILD_EXIT_CODE", "1")))
