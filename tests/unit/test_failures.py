"""launcher.failures: diagnosis of vLLM's end, and the Kubernetes termination message."""

from __future__ import annotations

import signal

import pytest

from launcher.failures import Diagnosis, diagnose, termination_message, write_termination_log


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("api_server.py: error: unrecognized arguments: --num-scheduler-steps 8", "bad_argument"),
        ("api_server.py: error: argument --block-size: invalid int value: 'x'", "bad_argument"),
        (
            "OSError: [Errno 98] error while attempting to bind on address: address already in use",
            "port_in_use",
        ),
        ("ERROR: [Errno 98] Address already in use", "port_in_use"),
        (
            "ImportError: libhccl.so: cannot open shared object file: No such file or directory",
            "missing_cann_library",
        ),
        ("RuntimeError: Failed to infer device type", "missing_cann_library"),
        (
            "RuntimeError: NPU out of memory. Tried to allocate 2.00 GiB (NPU 0; 60.96 GiB total capacity)",
            "npu_out_of_memory",
        ),
        ("torch.OutOfMemoryError: CUDA out of memory.", "npu_out_of_memory"),
        (
            "ValueError: No available memory for the cache blocks. Try increasing gpu_memory_utilization",
            "npu_out_of_memory",
        ),
        ("MemoryError", "host_out_of_memory"),
        ("OSError: [Errno 12] Cannot allocate memory", "host_out_of_memory"),
        (
            "RuntimeError: HCCL function error: hcclCommInitRootInfo, error code is 7 ... timeout",
            "hccl_timeout",
        ),
        ("EI0006: Getting socket times out.", "hccl_timeout"),
        ("RuntimeError: torchair cache mismatch: recompile required (.torchair_cache)", "stale_graph_cache"),
        ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.", "engine_died"),
        ("RuntimeError: Engine core initialization failed. See root cause above.", "engine_died"),
    ],
)
def test_known_failures_are_recognised_by_their_lines(line, reason):
    diagnosis = diagnose(
        1, ["INFO starting", line, "Traceback (most recent call last):"], requested=False, was_ready=False
    )
    assert diagnosis.reason == reason
    assert diagnosis.hint


def test_root_cause_beats_its_consequence():
    lines = ["RuntimeError: NPU out of memory. Tried to allocate 1 GiB", "EngineDeadError: engine died"]
    assert diagnose(0, lines, requested=False, was_ready=True).reason == "npu_out_of_memory"


def test_a_healthy_torchair_cache_line_is_not_blamed():
    lines = ["INFO torchair cache dir: /root/.torchair_cache", "ValueError: something else"]
    assert diagnose(1, lines, requested=False, was_ready=False).reason == "exited_with_error"


@pytest.mark.parametrize(
    ("returncode", "was_ready", "trigger", "reason"),
    [
        (2, False, None, "bad_argument"),  # argparse's status, message unknown
        (2, True, None, "exited_with_error"),  # after ready, 2 is just a status
        (-signal.SIGKILL, True, None, "oom_killed"),
        (-signal.SIGSEGV, True, None, "killed_by_signal"),
        (0, True, None, "exited_unexpectedly"),
        (0, True, "unhealthy", "unhealthy"),
        (0, False, "start_timeout", "start_timeout"),
        (1, True, "warmup_failed", "warmup_failed"),
        (3, True, None, "exited_with_error"),
    ],
)
def test_status_and_trigger_decide_when_no_line_does(returncode, was_ready, trigger, reason):
    assert (
        diagnose(returncode, ["nothing useful"], requested=False, was_ready=was_ready, trigger=trigger).reason == reason
    )


def test_a_requested_stop_is_just_stopped():
    assert diagnose(-signal.SIGKILL, ["EngineDeadError"], requested=True, was_ready=True) == Diagnosis("stopped")


def test_termination_message_fits_and_keeps_the_newest_lines():
    lines = [f"line {i} " + "z" * 300 for i in range(100)] + ["é" * 5000]
    text = termination_message(1, Diagnosis("npu_out_of_memory", "h" * 5000), lines, note="gave up")
    assert len(text.encode()) <= 4096
    assert text.startswith("vLLM exited with status 1 (exit code 1): npu_out_of_memory\nhint: hhh")
    small = termination_message(-9, Diagnosis("oom_killed", "raise the limit"), lines, note="gave up: never")
    assert len(small.encode()) <= 4096
    assert small.startswith("vLLM was killed by SIGKILL (exit code 137): oom_killed\nhint: raise the limit\n")
    assert "gave up: never\nlast lines:\n" in small
    assert small.rstrip("\n").endswith("...")  # the newest (huge) line is kept, cut
    assert "line 99 " in small and "line 0 " not in small


def test_termination_log_is_written_only_where_it_belongs(tmp_path):
    new = tmp_path / "termination-log"
    assert write_termination_log(str(new), "why")
    assert new.read_text() == "why"
    assert write_termination_log(str(new), "overwritten")
    assert new.read_text() == "overwritten"
    assert not write_termination_log(str(tmp_path / "missing-dir" / "log"), "x")
    assert not write_termination_log("", "x")
    # Outside Kubernetes /dev/termination-log does not exist: never create files in /dev.
    assert not write_termination_log("/dev/launch-test-termination-log", "x")
