"""`--exec` hands the process over to vLLM; a status port that cannot be bound stops before vLLM starts."""

from __future__ import annotations

import signal
import socket

from .helpers import child


def test_exec_replaces_the_launcher_with_vllm(run_launcher):
    launcher = run_launcher(child("signals.py"), env={"CHILD_EXIT_ON_STOP": "9"}, exec_mode=True)
    line = launcher.wait_for_raw("child ready pid=")
    assert int(line.rsplit("=", 1)[1]) == launcher.pid  # same process: no supervisor in between
    launcher.send(signal.SIGTERM)
    launcher.wait_for_raw("child got SIGTERM")
    assert launcher.wait_exit() == 9
    assert not launcher.find("supervisor_started")


def test_exec_of_a_missing_program_is_127(run_launcher):
    launcher = run_launcher(["/nonexistent/vllm"], exec_mode=True)
    assert launcher.wait_exit() == 127
    assert launcher.wait_for("exec_failed")["program"] == "/nonexistent/vllm"


def test_a_busy_status_port_is_an_environment_error_and_starts_nothing(run_launcher):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        launcher = run_launcher(child("signals.py"), status_port=busy.getsockname()[1])
        assert launcher.wait_exit() == 3
    assert "status_port" in launcher.wait_for("status_port_unavailable")["fix"]
    assert not launcher.find("child_started")


def test_exec_with_a_cache_dir_gives_vllm_its_entry_but_manages_nothing(run_launcher, tmp_path):
    launcher = run_launcher(
        child("fake_vllm.py"), env={"LAUNCH_CACHE_DIR": str(tmp_path), "FAKE_GRAPH_CACHE": "1"}, exec_mode=True
    )
    warning = launcher.wait_for("cache_unmanaged")
    launcher.wait_for_raw("Compiling a graph")
    assert (tmp_path / warning["fingerprint"] / "data" / "vllm" / "graph.bin").exists()
    assert not (tmp_path / warning["fingerprint"] / "manifest.json").exists()  # never trusted
    launcher.send(signal.SIGTERM)
    assert launcher.wait_exit() == 0
