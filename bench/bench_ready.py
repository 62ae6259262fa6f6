"""Time to ready: `launch run --profile cpu-dev` against bare vLLM on the tiny model, side by side.

Both start the same vLLM command line (the bare one is taken from `launch render`), alternately, with
the same environment, and are timed from spawn:
- `health`: until vLLM's own /health answers 200 (what the launcher adds before vLLM serves);
- `ready`: for the launcher, until its /readyz answers 200 (what Kubernetes waits for); for bare
  vLLM, the same as `health`.
Prints the medians and the ratio launch/bare (goal: ready ratio <= 1.05).

Usage: python bench/bench_ready.py [--rounds 2]   (with a venv that has vLLM: .venv/bin/python)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.tinymodel import ensure_tiny_model
from tests.e2e import support

REPO = Path(__file__).resolve().parent.parent

RENDER = [sys.executable, "-m", "launcher", "render", "--profile", "cpu-dev"]
POLL = 0.05  # seconds between probes: small against a 30 s start, so it barely blurs the numbers
START_TIMEOUT = 300.0


def child_env(dirs: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(dirs)
    return env


def rendered_argv(model: Path, port: int) -> tuple[list[str], dict[str, str]]:
    proc = subprocess.run(
        [*RENDER, "--model", str(model), "--set", f"vllm.port={port}", "--format", "json"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    plan = json.loads(proc.stdout)
    return list(plan["argv"]), dict(plan["env"])


def wait_until(url: str, server: support.Server) -> float:
    """Seconds from spawn until `url` answers 200."""
    if not support.wait_http_ok(url, timeout=START_TIMEOUT, alive=server.alive, interval=POLL):
        raise SystemExit(f"{url} never answered 200 (exit {server.proc.poll()}):\n{server.log_tail(40)}")
    return time.monotonic() - server.started


def stop(server: support.Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    server.wait(60)
    server.kill_all()


def run_bare(model: Path) -> dict[str, float]:
    port = support.free_port()
    argv, plan_env = rendered_argv(model, port)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-bare-"))
    try:
        with support.run_dirs(run_dir) as dirs:
            env = {**child_env(dirs), **plan_env}
            server = support.Server(argv, env=env, cwd=run_dir, log_path=run_dir / "log")
            try:
                health = wait_until(f"http://127.0.0.1:{port}/health", server)
                return {"health": health, "ready": health}
            finally:
                stop(server)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_launch(model: Path) -> dict[str, float]:
    port, status_port = support.free_port(), support.free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    try:
        with support.run_dirs(run_dir) as dirs:
            env = child_env(dirs)
            env["LAUNCH_STATUS_PORT"] = str(status_port)
            argv = [sys.executable, "-m", "launcher", "run", "--profile", "cpu-dev", "--model", str(model)]
            argv += ["--set", f"vllm.port={port}"]
            server = support.Server(argv, env=env, cwd=run_dir, log_path=run_dir / "log")
            try:
                health = wait_until(f"http://127.0.0.1:{port}/health", server)
                ready = wait_until(f"http://127.0.0.1:{status_port}/readyz", server)
                return {"health": health, "ready": ready}
            finally:
                stop(server)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="starts of each (alternating)")
    args = parser.parse_args()
    cache = Path(os.environ.get("LAUNCH_TEST_CACHE") or "~/.cache/launch/test-model").expanduser()
    model = ensure_tiny_model(cache)

    results: dict[str, list[dict[str, float]]] = {"bare": [], "launch": []}
    for i in range(args.rounds):
        # Alternate, and swap who goes first each round, so a warming page cache favours neither.
        order = [("bare", run_bare), ("launch", run_launch)]
        for name, run in order if i % 2 == 0 else order[::-1]:
            result = run(model)
            results[name].append(result)
            print(f"round {i + 1}: {name:<6} health {result['health']:6.2f} s  ready {result['ready']:6.2f} s")

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print()
    print(f"{'':<22}{'bare vLLM':>10}{'launch run':>12}{'ratio':>8}")
    for key, label in (("health", "vLLM /health 200"), ("ready", "ready (/readyz)")):
        bare, launch = median("bare", key), median("launch", key)
        print(f"{label:<22}{bare:9.2f}s{launch:11.2f}s{launch / bare:8.3f}")
    ratio = median("launch", "ready") / median("bare", "ready")
    verdict = "met" if ratio <= 1.05 else "NOT met"
    print(f"\nmedians of {args.rounds} starts each; goal: ready ratio <= 1.05 -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
