"""Writes what real programs write: a 100 KB line, bytes that are not UTF-8, a carriage-return
progress bar, a secret, vLLM's level prefixes, a last line without a newline; then waits for SIGTERM."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
out = sys.stdout.buffer
out.write(b"long:" + b"x" * 100_000 + b"\n")
out.write(b"bad bytes: \xff\xfe end\n")
out.write(b"Loading shards: 10%\rLoading shards: 50%\rLoading shards: 100%\n")
out.write(b"non-default args: {'api_key': 'sk-secret-123', 'model': 'm'}\n")
out.write(b"WARNING 05-09 10:00:00 [config.py:1] a warning\n")
out.write(b"(EngineCore_DP0 pid=42) ERROR 05-09 10:00:00 [core.py:1] an error\n")
out.write(b"no newline at the end")
out.flush()
os.close(1)  # the last line ends with the pipe
while True:
    time.sleep(0.05)
