"""The supervisor's costs, each measured side by side with the same child without the launcher.

1. Log forwarding: a child prints N lines (default 1,000,000) via `launch run`, counted as they arrive,
   against the same child writing to /dev/null. Goal: >= 200,000 lines/s and a ratio <= 2.
2. Stop: SIGTERM to everything gone, cooperative child, via the launcher against the child alone.
   Goal: < 100 ms more than the child's own time.
3. Restart: a crash to the next vLLM spawned, backoff excluded (backoff_initial 0). Goal: < 200 ms.
4. Idle: the launcher's CPU and RSS while a fake vLLM is ready, default health_interval (10 s).
   Goal: < 0.5 % of one core, < 60 MB.

Usage: python bench/bench_supervisor.py [--lines 1000000] [--flood-runs 3] [--runs 10] [--idle-seconds 60]
The children are the test children (tests/children); the launcher is the real CLI. On a small shared
machine the flood depends on what else runs: it is repeated and the median run is reported, with the
load average, so that numbers from different runs can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil

REPO = Path(__file__).resolve().parent.parent
CHILDREN = REPO / "tests" / "children"
PYTHON = sys.executable
MODEL = "tests/fixtures/models/llama-tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launcher(child: str, env: dict[str, str] | None = None, **supervisor: Any) -> subprocess.Popen[bytes]:
    sets = {"vllm.host": "127.0.0.1", "vllm.port": free_port()}
    sets.update({f"supervisor.{k}": v for k, v in supervisor.items()})
    command = [PYTHON, "-m", "launcher", "run", "--model", MODEL, "-p", "cpu-dev", "--dialect", "vllm-cpu"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LAUNCH_SERVER_COMMAND": shlex.join([PYTHON, str(CHILDREN / child)]),
        "LAUNCH_LOG_FORMAT": "json",
        **(env or {}),
    }
    return subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def events(pipe: IO[bytes], until: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Read JSON events until one satisfies `until`; return them all."""
    seen = []
    for raw in pipe:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        seen.append(event)
        if until(event):
            return seen
    raise RuntimeError("the launcher ended early:\n" + "\n".join(json.dumps(e) for e in seen[-20:]))


def drain(pipe: IO[bytes]) -> None:
    threading.Thread(target=lambda: [None for _ in pipe], daemon=True).start()


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def bench_flood(lines: int) -> dict[str, float]:
    env = {"CHILD_LINES": str(lines)}
    alone = subprocess.run(
        [PYTHON, str(CHILDREN / "flood.py")],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    alone_s = float(re.search(rb"seconds=([\d.]+)", alone.stderr).group(1))  # type: ignore[union-attr]

    proc = launcher("flood.py", env={**env, "CHILD_WAIT": "1"})
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process(proc.pid)
        while not stop.wait(0.05):
            try:
                peak[0] = max(peak[0], me.memory_info().rss)
            except psutil.Error:
                return

    threading.Thread(target=sample, daemon=True).start()
    assert proc.stdout is not None
    counted, first, last, rest = 0, 0.0, 0.0, b""
    child_s = float("nan")
    while True:
        chunk = proc.stdout.read1(1 << 20)
        if not chunk:
            raise RuntimeError("the launcher ended before the flood did")
        now = time.perf_counter()
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        complete, rest = data[:cut], data[cut:]
        found = complete.count(b"flood line")  # one per forwarded line; exact: only whole lines are counted
        if found:
            first = first or now
            last = now
            counted += found
        done = re.search(rb"flood done lines=\d+ seconds=([\d.]+)", complete)
        if done:
            child_s = float(done.group(1))
            break
    stop.set()
    proc.send_signal(signal.SIGTERM)
    drain(proc.stdout)
    proc.wait(60)
    via_s = last - first
    return {
        "lines": counted,
        "alone_s": alone_s,
        "via_s": via_s,
        "child_under_launcher_s": child_s,
        "rate": counted / via_s,
        "ratio": via_s / alone_s,
        "peak_rss_mb": peak[0] / 2**20,
    }


def bench_stop(runs: int) -> dict[str, float]:
    alone, via = [], []
    for _ in range(runs):
        child = subprocess.Popen([PYTHON, str(CHILDREN / "signals.py")], stdout=subprocess.PIPE)
        assert child.stdout is not None
        child.stdout.readline()  # "child ready"
        sent = time.perf_counter()
        child.send_signal(signal.SIGTERM)
        child.wait(30)
        alone.append(time.perf_counter() - sent)

        proc = launcher("signals.py")
        assert proc.stdout is not None
        events(proc.stdout, lambda e: e.get("source") == "vllm" and "child ready" in e["event"])
        drain(proc.stdout)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)  # the launcher exits only once it has verified that nothing is left
        via.append(time.perf_counter() - sent)
    return {"alone_ms": statistics.median(alone) * 1e3, "via_ms": statistics.median(via) * 1e3}


def bench_restart(runs: int) -> dict[str, float]:
    proc = launcher("exit_with.py", backoff_initial=0, max_restarts=runs, restart_window=3600, restart="on-failure")
    assert proc.stdout is not None
    crashed_at: float | None = None
    gaps = []
    backoff = []
    for raw in proc.stdout:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        text = event.get("event", "")
        if event.get("source") == "vllm" and "exiting with" in text:
            crashed_at = float(text.rsplit(" at ", 1)[1])
        elif text == "restarting":
            backoff.append(event["delay_s"])
        elif text == "child_started" and crashed_at is not None:
            gaps.append(stamp(event) - crashed_at)
        elif text == "supervisor_exiting":
            break
    proc.wait(30)
    return {"restart_ms": statistics.median(gaps) * 1e3, "max_ms": max(gaps) * 1e3, "backoff_s": max(backoff)}


def bench_idle(seconds: float) -> dict[str, float]:
    proc = launcher("fake_vllm.py")
    assert proc.stdout is not None
    events(proc.stdout, lambda e: e.get("event") == "ready")
    drain(proc.stdout)
    me = psutil.Process(proc.pid)
    time.sleep(1)  # let the start-up settle (imports, first probes)
    before = me.cpu_times()
    start = time.perf_counter()
    time.sleep(seconds)
    after = me.cpu_times()
    elapsed = time.perf_counter() - start
    rss = me.memory_info().rss
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    used = (after.user + after.system) - (before.user + before.system)
    return {"cpu_percent": used / elapsed * 100, "rss_mb": rss / 2**20, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--flood-runs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, load average {load}", flush=True)

    floods = sorted((bench_flood(args.lines) for _ in range(args.flood_runs)), key=lambda r: r["ratio"])
    flood = floods[len(floods) // 2]
    spread = ", ".join(f"{r['rate'] / 1000:.0f}k/{r['ratio']:.2f}" for r in floods)
    stop = bench_stop(args.runs)
    restart = bench_restart(args.runs)
    idle = bench_idle(args.idle_seconds)

    overhead = stop["via_ms"] - stop["alone_ms"]
    rows = [
        (
            f"log forwarding, {flood['lines']:,} lines",
            f"{flood['rate']:,.0f} lines/s; {flood['via_s']:.2f} s via launcher vs {flood['alone_s']:.2f} s "
            f"to /dev/null = ratio {flood['ratio']:.2f} (child's own loop under launcher "
            f"{flood['child_under_launcher_s']:.2f} s); launcher peak RSS {flood['peak_rss_mb']:.0f} MB; "
            f"median of {len(floods)} runs (lines/s / ratio: {spread})",
            ">= 200k lines/s, ratio <= 2",
            flood["rate"] >= 200_000 and flood["ratio"] <= 2 and flood["lines"] == args.lines,
        ),
        (
            "SIGTERM to all gone",
            f"{stop['via_ms']:.0f} ms via launcher vs {stop['alone_ms']:.0f} ms child alone = +{overhead:.0f} ms "
            f"(median of {args.runs})",
            "< +100 ms",
            overhead < 100,
        ),
        (
            "crash to restarted",
            f"{restart['restart_ms']:.0f} ms median, {restart['max_ms']:.0f} ms max of {args.runs} "
            f"(backoff {restart['backoff_s']:g} s)",
            "< 200 ms",
            restart["restart_ms"] < 200,
        ),
        (
            f"idle, ready fake vLLM, {idle['seconds']:.0f} s",
            f"{idle['cpu_percent']:.3f} % of a core, RSS {idle['rss_mb']:.0f} MB",
            "< 0.5 %, < 60 MB",
            idle["cpu_percent"] < 0.5 and idle["rss_mb"] < 60,
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, measured, goal, ok in rows:
        print(f"{name:<{width}}  {'ok  ' if ok else 'MISS'}  {measured}  [goal {goal}]")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
