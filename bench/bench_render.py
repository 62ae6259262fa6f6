"""`launch render --profile graph` against `python -c pass`, side by side in one run.

Prints the median wall time of each, their ratio, and the heaviest imports of the CLI
(`python -X importtime`), then fails if render imports vLLM, torch or aiohttp.
Usage: python bench/bench_render.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RENDER = [
    "-m", "launcher", "render", "--profile", "graph", "--dialect", "ascend-vllm-0.6",
    "--model", "tests/fixtures/models/qwen2-7b",
]  # fmt: skip
FORBIDDEN = ("vllm", "torch", "torch_npu", "aiohttp", "transformers", "prometheus_client")


def wall(args: list[str], runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def imports() -> list[tuple[int, str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *RENDER], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative), name))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    wall([*RENDER], 2)  # warm the page cache and .pyc files
    baseline = wall(["-c", "pass"], args.runs)
    render = wall(RENDER, args.runs)
    print(f"python -c pass          {baseline * 1000:7.1f} ms (median of {args.runs})")
    print(f"launch render -p graph  {render * 1000:7.1f} ms (median of {args.runs})")
    print(f"ratio                   {render / baseline:7.2f} x   (goal: render < 250 ms)")
    rows = imports()
    total = next((c for c, n in rows if n == "launcher.cli"), 0)
    print(f"import launcher.cli     {total / 1000:7.1f} ms; heaviest imports:")
    for cumulative, name in sorted(rows, reverse=True)[:8]:
        print(f"  {cumulative / 1000:7.1f} ms  {name}")
    heavy = sorted({n.split(".")[0] for _, n in rows} & set(FORBIDDEN))
    print(f"forbidden imports: {heavy or 'none'}")
    return 1 if heavy or render > 0.25 else 0


if __name__ == "__main__":
    raise SystemExit(main())
