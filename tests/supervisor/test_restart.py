"""Restart policy end to end: backoff, giving up, what is never retried, the termination log."""

from __future__ import annotations

import signal
import time

from .helpers import child


def test_crash_at_start_is_retried_with_growing_delays_then_given_up(run_launcher):
    launcher = run_launcher(
        child("exit_with.py"),
        env={"CHILD_EXIT_CODE": "5"},
        supervisor={"max_restarts": 3, "backoff_initial": 0.2, "backoff_max": 10},
    )
    assert launcher.wait_exit() == 5  # the last status
    assert len(launcher.find("child_started")) == 4
    delays = [e["delay_s"] for e in launcher.find("restarting")]
    assert len(delays) == 3
    assert delays == sorted(delays) and delays[2] > delays[0]
    assert 0.1 <= delays[0] <= 0.2 and 0.4 <= delays[2] <= 0.8  # equal jitter around 0.2 * 2^n
    assert "3 restarts within" in launcher.wait_for("giving_up")["why"]


def test_backoff_is_capped(run_launcher):
    launcher = run_launcher(
        child("exit_with.py"),
        env={"CHILD_EXIT_CODE": "5"},
        supervisor={"max_restarts": 4, "backoff_initial": 0.1, "backoff_max": 0.2},
    )
    assert launcher.wait_exit() == 5
    assert max(e["delay_s"] for e in launcher.find("restarting")) <= 0.2


def test_rejected_arguments_are_not_retried(run_launcher):
    launcher = run_launcher(child("bad_args.py"), supervisor={"restart": "always"})
    assert launcher.wait_exit() == 2
    exited = launcher.wait_for("child_exited")
    assert exited["reason"] == "bad_argument"
    assert "launch render" in exited["hint"]
    assert any("unrecognized arguments" in line for line in exited["last_lines"])
    assert "not retried" in launcher.wait_for("giving_up")["why"]
    assert len(launcher.find("child_started")) == 1


def test_exit_zero_nobody_asked_for_is_restarted(run_launcher):
    launcher = run_launcher(child("exit_with.py"), env={"CHILD_EXIT_CODE": "0"}, supervisor={"max_restarts": 1})
    assert launcher.wait_exit() == 1
    assert launcher.wait_for("restarting")["reason"] == "exited_unexpectedly"
    assert len(launcher.find("child_started")) == 2


def test_sigterm_during_backoff_ends_at_once_with_the_last_status(run_launcher):
    launcher = run_launcher(child("exit_with.py"), env={"CHILD_EXIT_CODE": "5"}, supervisor={"backoff_initial": 600})
    launcher.wait_for("restarting")
    sent = time.monotonic()
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 5
    assert time.monotonic() - sent < 10
    assert len(launcher.find("child_started")) == 1


def test_termination_log_holds_reason_hint_and_last_lines(run_launcher, tmp_path):
    path = tmp_path / "termination-log"
    noise = "\n".join(f"noise line {i} " + "y" * 200 for i in range(100))
    launcher = run_launcher(
        child("exit_with.py"),
        env={
            "CHILD_EXIT_CODE": "1",
            "CHILD_SAY": "RuntimeError: NPU out of memory. Tried to allocate 2.00 GiB\n" + noise,
        },
        supervisor={"restart": "never", "termination_log": str(path)},
    )
    assert launcher.wait_exit() == 1
    exited = launcher.wait_for("child_exited")
    assert exited["reason"] == "npu_out_of_memory"
    text = path.read_text()
    assert len(text.encode()) <= 4096
    assert text.startswith("vLLM exited with status 1 (exit code 1): npu_out_of_memory\nhint: ")
    assert "gave up: supervisor.restart is never" in text
    assert "noise line 99 " in text  # the newest lines are kept, the oldest dropped to fit


def test_a_requested_stop_writes_no_termination_log(run_launcher, tmp_path):
    path = tmp_path / "termination-log"
    launcher = run_launcher(child("signals.py"), supervisor={"termination_log": str(path)})
    launcher.wait_for_line("child ready")
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0
    assert not path.exists()


def test_npus_are_checked_again_before_each_restart(run_launcher, node):
    node.install_cann().npu_smi("info-8x32g-idle.txt")
    launcher = run_launcher(
        child("exit_with.py"), env={"CHILD_EXIT_CODE": "5"}, node=node, supervisor={"max_restarts": 2}
    )
    assert launcher.wait_exit() == 5
    assert len(launcher.find("child_started")) == 3
    # Once before the first start (cli), once before each of the two restarts, and once after each stop.
    info_calls = [c for c in node.calls() if c.startswith("info")]
    assert len(info_calls) >= 5, node.calls()


def test_a_foreign_process_on_the_npus_at_restart_ends_the_launcher_with_3(run_launcher, node):
    node.install_cann().npu_smi("info-8x32g-idle.txt")
    launcher = run_launcher(
        child("exit_with.py"), env={"CHILD_EXIT_CODE": "5"}, node=node, supervisor={"backoff_initial": 1.0}
    )
    launcher.wait_for("restarting")
    # While it backs off, someone else's process takes NPU 0.
    node.npu_smi("info-8x32g-busy.txt")
    assert launcher.wait_exit() == 3
    failed = launcher.wait_for("preflight_failed")
    assert "not started by this launcher" in failed["message"]
    assert len(launcher.find("child_started")) == 1  # nothing started on a busy NPU
