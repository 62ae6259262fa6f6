"""Builds a process tree that vLLM-like shutdowns leave behind, then prints "tree pids=[...]".

- two grandchildren that ignore SIGTERM (one moved to its own process group: only the tree finds it);
- a double-forked orphan in its own session (only the subreaper finds it). It exits once the file
  CHILD_ORPHAN_EXIT_FILE exists (a zombie to reap), else it runs until killed.
CHILD_TREE_EXIT: exit with this status right after building the tree; unset: wait for SIGTERM, exit 0.
"""

import os
import signal
import subprocess
import sys
import time

GRANDCHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)"
OWN_GROUP = "import os; os.setpgid(0, 0)\n" + GRANDCHILD

grandchildren = [
    subprocess.Popen([sys.executable, "-c", GRANDCHILD]),
    subprocess.Popen([sys.executable, "-c", OWN_GROUP]),
]

read_fd, write_fd = os.pipe()
if os.fork() == 0:
    os.setsid()
    orphan = os.fork()
    if orphan:
        os.write(write_fd, str(orphan).encode())
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_file = os.environ.get("CHILD_ORPHAN_EXIT_FILE")
    while not (exit_file and os.path.exists(exit_file)):
        time.sleep(0.05)
    os._exit(0)
os.wait()  # the intermediate process: its child is now an orphan
orphan_pid = int(os.read(read_fd, 64))

pids = [p.pid for p in grandchildren] + [orphan_pid]
print(f"tree pids={pids}", flush=True)
if "CHILD_TREE_EXIT" in os.environ:
    os._exit(int(os.environ["CHILD_TREE_EXIT"]))
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    time.sleep(0.05)
