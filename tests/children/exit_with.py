"""Says CHILD_SAY (lines, on stderr) and exits with CHILD_EXIT_CODE. Ignores its arguments (vLLM flags)."""

import os
import sys

for line in os.environ.get("CHILD_SAY", "").splitlines():
    print(line, file=sys.stderr)
print(f"exit_with: exiting with {os.environ.get('CHILD_EXIT_CODE', '1')}", flush=True)
sys.stderr.flush()
sys.exit(int(os.environ.get("CHILD_EXIT_CODE", "1")))
