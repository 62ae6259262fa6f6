"""The graph-compile cache under `launch run`: built on the first start, trusted only once ready,
reused by the next start, thrown away once when a start fails because of it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from launcher.cache import CacheDir

from .helpers import child


def entry_of(launcher) -> tuple[str, Path]:
    event = launcher.wait_for("cache_entry")
    return event["fingerprint"], Path(event["dir"])


def test_first_start_builds_and_the_second_reuses(run_launcher, tmp_path):
    env = {"LAUNCH_CACHE_DIR": str(tmp_path), "FAKE_GRAPH_CACHE": "1"}
    first = run_launcher(child("fake_vllm.py"), env=env)
    fp, data = entry_of(first)
    assert first.wait_for("cache_entry")["state"] == "building"
    first.wait_for("ready")
    first.wait_for("cache_complete")
    assert CacheDir(tmp_path).read(fp).state == "complete"
    assert first.get_json("/status")["cache"] == {
        "fingerprint": fp, "dir": str(data), "state": "complete", "reused": False, "recovered": False,
    }  # fmt: skip
    assert any("Compiling a graph" in line for line in first.vllm_lines())
    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0

    second = run_launcher(child("fake_vllm.py"), env=env)
    assert entry_of(second)[0] == fp
    assert second.wait_for("cache_entry")["reused"] is True
    second.wait_for("ready")
    assert any("Directly load the compiled graph" in line for line in second.vllm_lines())
    assert not any("Compiling a graph" in line for line in second.vllm_lines())
    second.send(signal.SIGTERM)
    assert second.wait_exit() == 0


def test_a_start_that_never_became_ready_leaves_no_trusted_entry(run_launcher, tmp_path):
    env = {"LAUNCH_CACHE_DIR": str(tmp_path), "FAKE_GRAPH_CACHE": "1", "FAKE_START_FILE": str(tmp_path / "never")}
    launcher = run_launcher(child("fake_vllm.py"), env=env)
    fp, _ = entry_of(launcher)
    launcher.wait_for_line("Compiling a graph")
    launcher.send(signal.SIGKILL)  # killed during the first compile: no chance to clean up
    launcher.wait_exit()
    assert CacheDir(tmp_path).read(fp).state == "building"

    again = run_launcher(child("fake_vllm.py"), env={"LAUNCH_CACHE_DIR": str(tmp_path), "FAKE_GRAPH_CACHE": "1"})
    event = again.wait_for("cache_entry")
    assert event["fingerprint"] == fp and event["state"] == "building" and event["reused"] is False
    assert "died while building" in again.wait_for("cache_discarded")["why"]
    again.wait_for("ready")
    again.send(signal.SIGTERM)
    assert again.wait_exit() == 0
    assert CacheDir(tmp_path).read(fp).state == "complete"


def test_a_cache_related_failure_discards_the_entry_and_retries_once(run_launcher, tmp_path):
    env = {"LAUNCH_CACHE_DIR": str(tmp_path), "FAKE_GRAPH_CACHE": "1"}
    first = run_launcher(child("fake_vllm.py"), env=env)
    fp, data = entry_of(first)
    first.wait_for("cache_complete")
    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0
    (data / "vllm" / "stale").write_text("a graph compiled for something else")

    second = run_launcher(child("fake_vllm.py"), env=env, supervisor={"restart": "never"})
    exited = second.wait_for("child_exited")
    assert exited["reason"] == "stale_graph_cache"
    assert "retrying once" in second.wait_for("cache_discarded")["why"]
    second.wait_for("ready")
    assert len(second.find("child_started")) == 2 and not second.find("restarting")
    status = second.get_json("/status")
    assert status["cache"]["recovered"] is True and status["cache"]["state"] == "complete"
    assert not (data / "vllm" / "stale").exists()
    second.send(signal.SIGTERM)
    assert second.wait_exit() == 0
    manifest = json.loads((tmp_path / fp / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["profiles"] == ["base", "cpu-dev"]


def test_prune_at_start_keeps_the_limit(run_launcher, tmp_path):
    cache = CacheDir(tmp_path)
    for i in range(3):
        lease = cache.acquire(f"{i:016x}", {"model": "old"}, wait=1)
        lease.mark_complete()
        lease.release()
    env = {"LAUNCH_CACHE_DIR": str(tmp_path), "LAUNCH_CACHE__MAX_ENTRIES": "2", "FAKE_GRAPH_CACHE": "1"}
    launcher = run_launcher(child("fake_vllm.py"), env=env)
    fp, _ = entry_of(launcher)
    launcher.wait_for("ready")
    assert len(launcher.find("cache_pruned")) == 2
    assert {e.fingerprint for e in cache.entries()} == {fp, "0000000000000002"}
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0
