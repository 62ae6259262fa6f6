"""Signals reach vLLM; stopping is SIGTERM, then SIGKILL after stop_timeout or at a second signal."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from .helpers import child, wait_until


def test_every_signal_is_forwarded(run_launcher):
    launcher = run_launcher(child("signals.py"))
    launcher.wait_for_line("child ready")
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        launcher.send(signum)
        launcher.wait_for_line(f"child got {signum.name}")
    assert not launcher.find("child_exited")  # only passed on: vLLM keeps running
    launcher.send(signal.SIGINT)
    launcher.wait_for_line("child got SIGINT")
    assert launcher.wait_exit() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_stop_signals_are_forwarded_and_end_the_launcher(run_launcher, signum):
    launcher = run_launcher(child("signals.py"), env={"CHILD_EXIT_ON_STOP": "7"}, supervisor={"restart": "always"})
    launcher.wait_for_line("child ready")
    launcher.send(signum)
    launcher.wait_for_line(f"child got {signum.name}")
    assert launcher.wait_exit() == 7
    assert launcher.wait_for("stop_requested")["signal"] == signum.name
    assert not launcher.find("restarting")


def test_a_child_that_ignores_sigterm_is_killed_after_stop_timeout(run_launcher):
    launcher = run_launcher(child("signals.py"), env={"CHILD_IGNORE_TERM": "1"}, supervisor={"stop_timeout": 1.0})
    launcher.wait_for_line("child ready")
    sent = time.monotonic()
    launcher.send(signal.SIGTERM)
    launcher.wait_for_line("child got SIGTERM")
    assert launcher.wait_exit() == 128 + signal.SIGKILL
    assert time.monotonic() - sent >= 0.9  # it was given its stop_timeout
    assert "still running" in launcher.wait_for("killing")["why"]
    assert launcher.leftovers() == []


def test_second_sigterm_kills_at_once(run_launcher):
    launcher = run_launcher(child("signals.py"), env={"CHILD_IGNORE_TERM": "1"}, supervisor={"stop_timeout": 120})
    launcher.wait_for_line("child ready")
    launcher.send(signal.SIGTERM)
    launcher.wait_for("stopping")
    sent = time.monotonic()
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 128 + signal.SIGKILL
    assert time.monotonic() - sent < 20  # far below the 120 s stop_timeout
    launcher.wait_for("stop_escalated")
    assert launcher.leftovers() == []


def test_not_ready_as_soon_as_sigterm_arrives(run_launcher):
    launcher = run_launcher(child("fake_vllm.py"), env={"FAKE_IGNORE_TERM": "1"}, supervisor={"stop_timeout": 120})
    ready = launcher.wait_for("ready")
    assert launcher.get("/readyz")[0] == 200
    launcher.send(signal.SIGTERM)
    launcher.wait_for("stopping")
    assert launcher.get("/readyz")[0] == 503
    assert psutil.Process(ready["pid"]).is_running()  # vLLM still runs: readiness went first
    assert launcher.get_json("/status")["state"] == "stopping"
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 128 + signal.SIGKILL
    wait_until(lambda: not psutil.pid_exists(ready["pid"]), what="vLLM gone")
