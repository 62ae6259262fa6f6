"""The device preflight before each start: healthy NPUs, no foreign memory holders, this launcher's own
leftovers stopped and waited for; and the check after a stop. Real processes, fake npu-smi."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from typing import Any

import pytest

from launcher import host, logs, npu, planner
from launcher.errors import PreflightError
from launcher.plan import Plan
from tests.ascend import Node, Processes, alive
from tests.support import model

LLAMA = model("llama-tiny")
MARKER = f"{LLAMA}@0"  # the plans below serve llama-tiny on port 0
CHECK = ("check", "--model", LLAMA, "--dialect", "vllm-ascend", "--set", "vllm.port=0")


def prepared(node: Node, fixture: str = "info-910prob-container.txt") -> Node:
    return node.install_cann().npu_smi(fixture)


def check(launch: Any, node: Node, *sets: str) -> Any:
    extra = [a for s in sets for a in ("--set", s)]
    return launch(*CHECK, "--set", "supervisor.stop_timeout=5", *extra, env=node.env())


def test_idle_devices_pass(launch: Any, node: Node) -> None:
    result = check(launch, prepared(node))
    assert result.code == 0, result.err
    assert "npu_ready" in result.err and "device 0 (NPU 0 chip 0): OK, HBM 18/32768 MB" in result.err


def test_a_foreign_process_is_listed_and_left_alone(launch: Any, node: Node, processes: Processes) -> None:
    pid = processes.spawn(None, orphan=False)  # no marker: somebody else's
    result = check(launch, prepared(node).processes(f"1 0 {pid} python 30780"))
    assert result.code == 3
    assert f"device 1 (NPU 1 chip 0): PID {pid} python 30780 MB" in result.err
    assert "not started by this launcher" in result.err and "fix:" in result.err
    assert alive(pid)


def test_a_host_pid_from_an_earlier_container_is_foreign(launch: Any, node: Node) -> None:
    # An engine left by an earlier container of this pod: npu-smi shows the node's PID, absent here.
    result = check(launch, prepared(node).processes("0 0 4194000 python 30780 sticky"))
    assert result.code == 3 and "PID 4194000 python 30780 MB" in result.err
    assert "stop it there" in result.err


def test_marker_with_a_living_parent_is_not_ours(launch: Any, node: Node, processes: Processes) -> None:
    # The rendered script run by hand from a shell: the shell owns it, the launcher must not kill it.
    pid = processes.spawn(MARKER, orphan=False)
    result = check(launch, prepared(node).processes(f"0 0 {pid} python 30780"))
    assert result.code == 3 and f"PID {pid}" in result.err and alive(pid)


def test_another_services_leftover_is_not_ours(launch: Any, node: Node, processes: Processes, subreaper: None) -> None:
    pid = processes.spawn(f"{model('qwen2-7b')}@0", orphan=True)
    result = check(launch, prepared(node).processes(f"0 0 {pid} python 30780"))
    assert result.code == 3 and alive(pid)


@pytest.mark.parametrize("container_pid", [False, True], ids=["older driver", "process id in container"])
def test_our_leftover_is_stopped_and_waited_for(
    launch: Any, node: Node, processes: Processes, subreaper: None, container_pid: bool
) -> None:
    engine = processes.spawn(MARKER, orphan=True)
    assert npu.is_ours(engine, MARKER)
    prepared(node).processes(f"0 0 {engine} VLLM::EngineCor 28000", container_pid=container_pid)
    result = check(launch, node)
    assert result.code == 0, result.err
    assert not alive(engine)
    assert "npu_leftovers_stopping" in result.err and "npu_leftovers_released" in result.err
    assert f"PID {engine}" in result.err
    assert node.calls().count("info") >= 2  # asked again until the memory was free


def test_our_leftover_whose_memory_stays_is_exit_3_after_the_deadline(
    launch: Any, node: Node, processes: Processes, subreaper: None
) -> None:
    engine = processes.spawn(MARKER, orphan=True)
    prepared(node).processes(f"0 0 {engine} python 28000 sticky")
    started = time.monotonic()
    result = check(launch, node, "npu.free_timeout=1s")
    assert result.code == 3
    assert "after 1s npu-smi still lists them" in result.err and "npu.free_timeout" in result.err
    assert not alive(engine) and time.monotonic() - started < 20


def test_leftovers_are_only_listed_when_killing_is_off(
    launch: Any, node: Node, processes: Processes, subreaper: None
) -> None:
    engine = processes.spawn(MARKER, orphan=True)
    result = check(launch, prepared(node).processes(f"0 0 {engine} python 28000"), "npu.kill_leftovers=false")
    assert result.code == 3 and f"kill {engine}" in result.err and alive(engine)


def test_unselected_devices_may_be_busy(launch: Any, node: Node, processes: Processes) -> None:
    pid = processes.spawn(None, orphan=False)
    result = check(launch, prepared(node).processes(f"1 0 {pid} python 30780"), "devices=0")
    assert result.code == 0, result.err


def test_an_unhealthy_device_is_exit_3_with_its_error(launch: Any, node: Node) -> None:
    prepared(node)
    node.npu_smi(
        "info-910prob-container.txt",
        replace={"| 1     910ProB             | OK  ": "| 1     910ProB             | Critical"},
    )
    node.view(
        "health-1-0",
        "health-ok.txt",
        replace={
            ": OK": ": Critical",
            "Error Code                     : NA": "Error Code                     : 80E18005",
        },
    )
    result = check(launch, node)
    assert result.code == 3
    assert "device 1 (NPU 1 chip 0) is Critical (error code 80E18005" in result.err


def test_a_warning_health_is_logged_and_passes(launch: Any, node: Node) -> None:
    prepared(node)
    node.npu_smi(
        "info-910prob-container.txt",
        replace={"| 0     910ProB             | OK  ": "| 0     910ProB             | Warning"},
    )
    result = check(launch, node)
    assert result.code == 0, result.err
    assert "npu_health_warning" in result.err


def test_a_device_npu_smi_does_not_list(launch: Any, node: Node) -> None:
    node.visible = "0,1,2"  # the plugin says three, npu-smi shows two
    result = check(launch, prepared(node))
    assert result.code == 3 and "device 2 is not listed by npu-smi, which shows 2" in result.err


@pytest.mark.parametrize("how", ["absent", "hangs", "fails"])
def test_without_a_working_npu_smi_the_checks_are_skipped_with_a_warning(launch: Any, node: Node, how: str) -> None:
    prepared(node)
    sets = []
    if how == "hangs":
        node.hang(299.5)
        sets = ["npu.smi_timeout=0.3s"]
    elif how == "fails":
        node.fail("failure-dcmi-8020.txt")
    env = node.env(smi=how != "absent")
    started = time.monotonic()
    result = launch(*CHECK, *[a for s in sets for a in ("--set", s)], env=env)
    assert result.code == 0, result.err
    assert time.monotonic() - started < 30
    expected = {"absent": "npu-smi is not on PATH", "hangs": "did not answer within 0.3s", "fails": "-8020"}[how]
    assert expected in result.err and "fix" in result.err


# --- called by the supervisor ----------------------------------------------------------------------


def plan_for(node: Node, monkeypatch: pytest.MonkeyPatch) -> tuple[Plan, host.HostFacts]:
    for key, value in node.env().items():
        monkeypatch.setenv(key, value)
    facts = host.gather()
    request = planner.Request(model=LLAMA, dialect="vllm-ascend", sets=["vllm.port=0", "supervisor.stop_timeout=5"])
    return planner.build(request, facts, strict=False), facts


def captured_log() -> tuple[Any, io.StringIO]:
    out = io.StringIO()
    logs.configure("json", "debug", out)
    return logs.get_logger(), out


def events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_preflight_is_said_once_off_ascend(monkeypatch: pytest.MonkeyPatch, node: Node) -> None:
    log, out = captured_log()
    request = planner.Request(model=LLAMA, dialect="vllm-cpu", sets=["vllm.port=0"])
    plan = planner.build(request, host.gather(), strict=False)
    for _ in range(3):
        npu.preflight(plan, None, log)
    assert [e["event"] for e in events(out)] == ["npu_checks_skipped"]


def test_after_stop_reports_what_our_processes_still_hold(
    monkeypatch: pytest.MonkeyPatch, node: Node, processes: Processes
) -> None:
    plan, facts = plan_for(node, monkeypatch)
    prepared(node)
    worker = processes.spawn(None, orphan=False)  # a PID the supervisor knows as ours
    node.processes(f"1 0 {worker} VLLM::Worker_TP1 20000")
    log, out = captured_log()
    held = npu.after_stop(plan, {worker}, log, facts=facts, wait=0.3)
    assert [h.pid for h in held] == [worker]
    (event,) = events(out)
    assert event["event"] == "npu_still_held" and event["level"] == "warning"
    assert event["processes"] == [f"device 1 (NPU 1 chip 0): PID {worker} VLLM::Worker_TP1 20000 MB"]

    processes.cleanup()
    log, out = captured_log()
    assert npu.after_stop(plan, {worker}, log, facts=facts, wait=5) == []
    assert [e["event"] for e in events(out)] == ["npu_released"]


def test_after_stop_waits_for_memory_to_be_released(
    monkeypatch: pytest.MonkeyPatch, node: Node, processes: Processes
) -> None:
    plan, facts = plan_for(node, monkeypatch)
    prepared(node)
    worker = processes.spawn(None, orphan=False)
    node.processes(f"0 0 {worker} python 20000")
    log, out = captured_log()
    exits = threading.Timer(0.3, os.kill, (worker, signal.SIGKILL))  # a moment after the check began
    exits.start()
    held = npu.after_stop(plan, {worker}, log, facts=facts, wait=10)
    exits.join()
    assert held == [] and [e["event"] for e in events(out)] == ["npu_released"]


def test_preflight_raises_for_the_supervisor(monkeypatch: pytest.MonkeyPatch, node: Node, processes: Processes) -> None:
    plan, facts = plan_for(node, monkeypatch)
    pid = processes.spawn(None, orphan=False)
    prepared(node).processes(f"0 0 {pid} python 1000")
    log, _ = captured_log()
    with pytest.raises(PreflightError) as caught:
        npu.preflight(plan, facts, log)
    assert caught.value.exit_code == 3 and f"PID {pid} python 1000 MB" in caught.value.what
