"""The launcher ends with vLLM's own status (128+N for death by signal N), like tini and dumb-init."""

from __future__ import annotations

import signal

import pytest

from .helpers import child


@pytest.mark.parametrize("code", [1, 3, 42, 126, 127, 128, 200, 255])
def test_exit_status_is_propagated(run_launcher, code):
    launcher = run_launcher(child("exit_with.py"), env={"CHILD_EXIT_CODE": str(code)}, supervisor={"restart": "never"})
    assert launcher.wait_exit() == code
    exited = launcher.wait_for("child_exited")
    assert (exited["status"], exited["reason"]) == (code, "exited_with_error")
    assert launcher.wait_for("giving_up")["why"] == "supervisor.restart is never"


@pytest.mark.parametrize("code", [0, 1, 99, 255])
def test_status_after_a_requested_stop_is_propagated(run_launcher, code):
    launcher = run_launcher(child("signals.py"), env={"CHILD_EXIT_ON_STOP": str(code)})
    launcher.wait_for_line("child ready")
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == code
    assert launcher.wait_for("child_exited")["reason"] == "stopped"


@pytest.mark.parametrize(
    ("signum", "reason"),
    [
        (signal.SIGKILL, "oom_killed"),
        (signal.SIGSEGV, "killed_by_signal"),
        (signal.SIGABRT, "killed_by_signal"),
        (signal.SIGTERM, "killed_by_signal"),
    ],
)
def test_death_by_signal_is_128_plus_n(run_launcher, signum, reason):
    launcher = run_launcher(
        child("die_by_signal.py"), env={"CHILD_SIGNAL": str(int(signum))}, supervisor={"restart": "never"}
    )
    assert launcher.wait_exit() == 128 + signum
    exited = launcher.wait_for("child_exited")
    assert (exited["signal"], exited["reason"]) == (signum.name, reason)


def test_exit_zero_nobody_asked_for_is_a_failure(run_launcher):
    launcher = run_launcher(child("exit_with.py"), env={"CHILD_EXIT_CODE": "0"}, supervisor={"restart": "never"})
    assert launcher.wait_exit() == 1
    exited = launcher.wait_for("child_exited")
    assert (exited["status"], exited["reason"]) == (0, "exited_unexpectedly")


def test_a_program_that_does_not_exist_is_127_and_not_retried(run_launcher):
    launcher = run_launcher(["/nonexistent/vllm"], supervisor={"restart": "always"})
    assert launcher.wait_exit() == 127
    assert launcher.wait_for("child_exited")["reason"] == "spawn_failed"
    assert not launcher.find("restarting")
