"""Readiness, warm-up, liveness checks and the status endpoint, against a fake vLLM server."""

from __future__ import annotations

import json
import signal
import time

import pytest

from .helpers import child, wait_until


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_status_endpoint_follows_start_up(run_launcher, tmp_path):
    go = tmp_path / "start-now"
    launcher = run_launcher(child("fake_vllm.py"), env={"FAKE_START_FILE": str(go)})
    started = launcher.wait_for("child_started")
    seen = time.monotonic()
    assert launcher.get("/livez")[0] == 200
    assert launcher.get("/readyz")[0] == 503
    status = launcher.get_json("/status")
    assert (status["state"], status["pid"], status["ready_at"]) == ("starting", started["pid"], None)
    metrics = launcher.get("/metrics")[1].decode()
    assert (metric(metrics, "launch_child_up"), metric(metrics, "launch_ready")) == (1, 0)
    held_back = time.monotonic() - seen
    go.touch()

    ready = launcher.wait_for("ready")
    phases = [e["phase"] for e in launcher.find("startup_phase")]
    assert phases == ["spawned", "weights_loaded", "kv_cache_sized", "listening", "healthy"]
    assert ready["startup_s"] >= held_back  # counted from the spawn, which came before `seen`
    assert launcher.get("/readyz")[0] == 200
    status = launcher.get_json("/status")
    assert status["state"] == "ready"
    assert status["restarts"] == 0
    assert status["started_at"] and status["ready_at"] and status["last_exit_code"] is None
    assert set(status["phases"]) == set(phases)
    metrics = launcher.get("/metrics")[1].decode()
    assert metric(metrics, "launch_ready") == 1
    assert metric(metrics, "launch_child_up") == 1
    assert metric(metrics, "launch_restarts_total") == 0
    assert metric(metrics, "launch_last_startup_seconds") == pytest.approx(ready["startup_s"], abs=0.01)

    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0


@pytest.mark.parametrize(
    ("entrypoint", "path", "body"),
    [
        ("openai", "/v1/completions", {"model": "tiny-llama", "prompt": "hello", "max_tokens": 8}),
        ("api_server", "/generate", {"prompt": "hello", "max_tokens": 8}),
    ],
)
def test_warm_up_request_before_ready(run_launcher, tmp_path, entrypoint, path, body):
    record = tmp_path / "warmup.jsonl"
    launcher = run_launcher(
        child("fake_vllm.py"),
        env={"FAKE_WARMUP_LOG": str(record)},
        supervisor={"warmup": True},
        entrypoint=entrypoint,
        served_model_name="tiny-llama",
    )
    launcher.wait_for("ready")
    assert [json.loads(line) for line in record.read_text().splitlines()] == [{"path": path, "body": body}]
    phases = [e["phase"] for e in launcher.find("startup_phase")]
    assert phases[-2:] == ["healthy", "warm"]
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0


def test_a_failing_warm_up_fails_the_start(run_launcher):
    launcher = run_launcher(
        child("fake_vllm.py"),
        env={"FAKE_WARMUP_STATUS": "500"},
        supervisor={"warmup": True, "restart": "never"},
    )
    assert launcher.wait_exit() == 1  # vLLM exits 0 on our SIGTERM, but the start failed
    exited = launcher.wait_for("child_exited")
    assert (exited["reason"], exited["trigger"]) == ("warmup_failed", "warmup_failed")
    assert not launcher.find("ready")


def test_start_timeout(run_launcher):
    launcher = run_launcher(
        child("fake_vllm.py"),
        env={"FAKE_START_DELAY": "600"},
        supervisor={"start_timeout": 1.0, "restart": "never"},
    )
    assert launcher.wait_exit() == 1
    assert launcher.wait_for("child_exited")["reason"] == "start_timeout"


@pytest.mark.parametrize("failure", ["FAKE_HANG_FILE", "FAKE_503_FILE"])
def test_unhealthy_vllm_is_restarted(run_launcher, tmp_path, failure):
    trigger = tmp_path / "fail-now"
    launcher = run_launcher(
        child("fake_vllm.py"),
        env={failure: str(trigger)},
        supervisor={"health_timeout": 0.5, "unhealthy_after": 2, "backoff_initial": 0.1},
    )
    first = launcher.wait_for("ready")
    trigger.touch()  # from now on /health hangs, or answers 503
    failed = launcher.wait_for("health_check_failed")
    assert ("timed out" in failed["detail"]) if failure == "FAKE_HANG_FILE" else ("503" in failed["detail"])
    exited = launcher.wait_for("child_exited")
    assert (exited["pid"], exited["trigger"], exited["reason"]) == (first["pid"], "unhealthy", "unhealthy")
    assert launcher.wait_for("restarting")["reason"] == "unhealthy"
    second = launcher.wait_for("child_started", count=2)
    assert second["pid"] != first["pid"]
    trigger.unlink()  # the new vLLM is fine
    launcher.wait_for("ready", count=2)
    status = launcher.get_json("/status")
    assert (status["state"], status["restarts"], status["last_exit_reason"]) == ("ready", 1, "unhealthy")
    assert metric(launcher.get("/metrics")[1].decode(), "launch_restarts_total") == 1
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0


def test_a_failed_health_check_makes_readyz_fail_until_it_recovers(run_launcher, tmp_path):
    trigger = tmp_path / "dead"
    launcher = run_launcher(
        child("fake_vllm.py"), env={"FAKE_503_FILE": str(trigger)}, supervisor={"unhealthy_after": 1000}
    )
    launcher.wait_for("ready")
    trigger.touch()
    launcher.wait_for("health_check_failed")
    wait_until(lambda: launcher.get("/readyz")[0] == 503, what="/readyz 503")
    trigger.unlink()
    launcher.wait_for("health_recovered")
    wait_until(lambda: launcher.get("/readyz")[0] == 200, what="/readyz 200 again")
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0
