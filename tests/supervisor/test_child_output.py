"""vLLM's output: every line forwarded as a structured event, without blocking it, in bounded memory."""

from __future__ import annotations

import signal
import threading

import psutil

from .helpers import child

LINES = 1_000_000


def test_a_million_lines_are_all_forwarded_in_bounded_memory(run_launcher):
    launcher = run_launcher(child("flood.py"), env={"CHILD_WAIT": "1"}, count_lines_with=b"flood line")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        proc = psutil.Process(launcher.pid)
        while not done.wait(0.1):
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    launcher.wait_for_line("flood done", timeout=120)
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit(timeout=60) == 0
    done.set()
    sampler.join()
    assert launcher.counted == LINES
    assert peak[0] < 100 * 2**20, f"launcher RSS peaked at {peak[0] / 2**20:.0f} MiB"


def test_odd_output_is_cut_replaced_masked_and_levelled(run_launcher):
    launcher = run_launcher(child("odd_output.py"))
    launcher.wait_for_line("no newline at the end")
    events = {e["event"][:12]: e for e in launcher.find(where=lambda e: e.get("source") == "vllm")}
    long = events["long:" + "x" * 7]["event"]
    assert long.endswith("[...line cut at 16 KiB]") and len(long) < 16 * 1024 + 40
    assert events["bad bytes: \ufffd"]["event"] == "bad bytes: \ufffd\ufffd end"
    assert events["Loading shar"]["event"] == "Loading shards: 100%"
    assert "sk-secret-123" not in launcher.tail(100)
    assert "***" in events["non-default "]["event"]
    assert events["WARNING 05-0"]["level"] == "warning"
    assert events["(EngineCore_"]["level"] == "error"
    assert {e["stream"] for e in events.values()} == {"stdout"}
    assert {e["pid"] for e in events.values()} == {launcher.wait_for("child_started")["pid"]}
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0
