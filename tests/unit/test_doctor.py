"""`launch doctor`: one report per scenario, compared with a snapshot in tests/golden/doctor/.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/unit/test_doctor.py` and read
the diff before committing it.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from launcher import __version__
from tests.ascend import Node, Processes
from tests.support import REPO, model

SNAPSHOTS = REPO / "tests" / "golden" / "doctor"
LLAMA = model("llama-tiny")
QWEN = model("qwen2-7b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


def normalise(text: str, node: Node, pids: dict[int, str], port: int) -> str:
    text = text.replace(str(node.root), "<node>").replace(str(REPO), "<repo>")
    text = text.replace(f"0.0.0.0:{port} ", "0.0.0.0:<port> ")
    text = text.replace(f"launch {__version__} on Python {platform.python_version()}", "launch <version> on Python <x>")
    text = re.sub(r"; installed: .*", "; installed: <what this machine has>", text)  # vLLM, torch versions
    for pid, name in pids.items():
        text = re.sub(rf"\b{pid}\b", name, text)
    return text


def cpu(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    return ["--dialect", "vllm-cpu", "--model", LLAMA], node.env(smi=False), {}


def ascend_ready(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    node.install_cann("8.0.RC2").npu_smi("info-910prob-container.txt")
    return ["--dialect", "vllm-ascend", "-p", "graph", "--model", QWEN], node.env(), {}


def ascend_bare(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    env = {k: v for k, v in node.env(smi=False).items() if k != "ASCEND_VISIBLE_DEVICES"}
    return ["--dialect", "vllm-ascend", "--model", "/models/absent"], env, {}


def npu_smi_hangs(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    node.install_cann().npu_smi("info-910prob-container.txt").hang(299.5)
    return ["--dialect", "ascend-vllm-0.6", "--model", QWEN, "--set", "npu.smi_timeout=0.3s"], node.env(), {}


def npu_smi_fails(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    node.install_cann().fail("failure-dcmi-8005.txt")
    return ["--dialect", "vllm-ascend-torchair", "--model", QWEN], node.env(), {}


def busy(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    ours = procs.spawn(f"{QWEN}@{port}", orphan=True)  # the marker of this service
    foreign = procs.spawn(None, orphan=False)
    node.install_cann().npu_smi("info-910prob-container.txt")
    node.processes(f"0 0 {ours} VLLM::EngineCor 28000", f"1 0 {foreign} python 30780", container_pid=True)
    pids = {ours: "<ours>", foreign: "<foreign>", ours + 100000: "<ours-host>", foreign + 100000: "<foreign-host>"}
    return ["--dialect", "vllm-ascend", "--model", QWEN], node.env(), pids


def duo_310p(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    # One Atlas 300I Duo card: its two chips are two devices for the plugin and the runtime.
    node.install_cann().npu_smi("info-310p3-duo-two-chips.txt")
    return ["--dialect", "vllm-ascend", "--model", QWEN, "--set", "vllm.tensor_parallel_size=auto"], node.env(), {}


def unhealthy(node: Node, procs: Processes, port: int) -> tuple[list[str], dict[str, str], dict[int, str]]:
    node.install_cann().npu_smi(
        "info-910prob-container.txt",
        replace={"| 1     910ProB             | OK  ": "| 1     910ProB             | Alarm"},
    )
    node.view(
        "health-1-0",
        "health-ok.txt",
        replace={
            ": OK": ": Alarm",
            "Code                     : NA": "Code : 80CF8009",
            "Information              : NA": "Information : HBM multi-bit ECC",
        },
    )
    return ["--dialect", "vllm-ascend", "--model", QWEN], node.env(), {}


Scenario = Callable[[Node, Processes, int], tuple[list[str], dict[str, str], dict[int, str]]]
SCENARIOS: dict[str, tuple[Scenario, int]] = {
    "cpu": (cpu, 0),
    "ascend-ready": (ascend_ready, 0),
    "ascend-bare": (ascend_bare, 3),
    "npu-smi-hangs": (npu_smi_hangs, 3),
    "npu-smi-fails": (npu_smi_fails, 3),
    "busy": (busy, 3),
    "310p-duo": (duo_310p, 0),
    "unhealthy": (unhealthy, 3),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_doctor_report(launch: Any, node: Node, processes: Processes, subreaper: None, name: str) -> None:
    scenario, code = SCENARIOS[name]
    port = free_port()
    args, env, pids = scenario(node, processes, port)
    result = launch("doctor", *args, "--set", f"vllm.port={port}", env=env)
    assert result.code == code, result.out + result.err
    report = normalise(result.out, node, pids, port)
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(report)
    assert path.exists(), f"no snapshot {path.name}: run with UPDATE_GOLDEN=1 and review it"
    assert report == path.read_text()
    # Every failing or warning line says what it means and what to do.
    for block in re.split(r"\n(?=  \S)", report)[1:]:
        if block.lstrip().startswith("FAIL"):
            assert "means:" in block and "fix:" in block, block


def test_doctor_json(launch: Any, node: Node, processes: Processes) -> None:
    args, env, _ = npu_smi_fails(node, processes, 0)
    result = launch("doctor", "--json", *args, "--set", "vllm.port=0", env=env)
    assert result.code == 3
    report = result.json()
    assert report["ok"] is False and report["failed"] == 1
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == ["npu-smi"]
    assert "-8005" in failed[0]["detail"] and failed[0]["means"] and failed[0]["fix"]
    dialect = next(c for c in report["checks"] if c["name"] == "dialect")
    assert dialect["detail"].startswith("vllm-ascend-torchair (from --dialect); installed: ")
    assert {"launch", "dialect", "cann", "environment", "devices", "model", "plan", "port"} <= {
        c["name"] for c in report["checks"]
    }


def test_doctor_without_a_model_still_checks_the_node(launch: Any, node: Node) -> None:
    node.install_cann().npu_smi("info-910prob-container.txt")
    result = launch("doctor", "--dialect", "vllm-ascend", "--set", "vllm.port=0", env=node.env())
    assert result.code == 0, result.out
    assert "skip  model" in result.out and "device 1" in result.out


def test_doctor_reports_a_bad_setting_and_goes_on(launch: Any, node: Node) -> None:
    result = launch("doctor", "--dialect", "vllm-cpu", "--set", "vllm.port=0", env={"LAUNCH_DEVICES": "0,0"})
    # devices are not looked at on the CPU build; a broken profile is
    bad = launch("doctor", "-p", "nonexistent", "--dialect", "vllm-cpu", env=node.env(smi=False))
    assert result.code == 0, result.out
    assert bad.code == 3 and "FAIL  settings" in bad.out and "port" in bad.out
