"""Time to ready of `launch run` with a cold graph-compile cache against a warm one, side by side.

Each round starts the tiny model on vLLM's CPU build with graph compilation on (`graph.mode=auto`)
twice: first on an empty LAUNCH_CACHE_DIR (vLLM compiles and the launcher marks the entry complete),
then again on the same directory (vLLM loads the compiled graphs). Timed from spawn until the
launcher's /readyz answers 200. Prints the medians and warm/cold.

Usage: .venv/bin/python bench/bench_cache.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.tinymodel import ensure_tiny_model
from tests.e2e import support

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 600.0


def time_to_ready(model: Path, cache_dir: Path, run_dir: Path) -> float:
    vllm_port, status_port = support.free_port(), support.free_port()
    while status_port == vllm_port:
        status_port = support.free_port()
    with support.run_dirs(run_dir) as dirs:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
        env.update(dirs, PYTHONPATH=str(REPO), LAUNCH_CACHE_DIR=str(cache_dir), LAUNCH_STATUS_PORT=str(status_port))
        argv = [
            sys.executable, "-m", "launcher", "run", "--profile", "cpu-dev", "--model", str(model),
            "--set", "graph.mode=auto", "--set", f"vllm.port={vllm_port}",
        ]  # fmt: skip
        server = support.Server(argv, env=env, cwd=run_dir, log_path=run_dir / "launch.log")
        try:
            url = f"http://127.0.0.1:{status_port}/readyz"
            if not support.wait_http_ok(url, timeout=START_TIMEOUT, alive=server.alive, interval=0.05):
                raise SystemExit(f"never ready:\n{server.log_tail(40)}")
            elapsed = time.monotonic() - server.started
            server.proc.send_signal(signal.SIGTERM)
            server.wait(60)
        finally:
            server.kill_all()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = ensure_tiny_model(Path(os.environ.get("LAUNCH_TEST_CACHE") or "~/.cache/launch/test-model").expanduser())
    cold, warm = [], []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
            base = Path(tmp)
            for name in ("cold", "warm"):
                (base / name).mkdir()
            cold.append(time_to_ready(model, base / "cache", base / "cold"))
            warm.append(time_to_ready(model, base / "cache", base / "warm"))
        print(f"round {round_ + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s", flush=True)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"time to ready, cold cache  {c:7.2f} s (median of {args.rounds})")
    print(f"time to ready, warm cache  {w:7.2f} s (median of {args.rounds})")
    print(f"warm / cold                {w / c:7.3f}")
    print(f"load average               {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
