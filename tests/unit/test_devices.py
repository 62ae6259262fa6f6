"""Which NPUs vLLM gets: the device plugin's variable, /dev/davinciN, `devices:`, the container's own
ASCEND_RT_VISIBLE_DEVICES, `tensor_parallel_size: auto`, and Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher import host
from tests.ascend import Node
from tests.support import model

LLAMA = model("llama-tiny")
ASCEND = "vllm-ascend"


def render(launch: Any, *args: str, env: dict[str, str] | None = None, dialect: str = ASCEND) -> Any:
    result = launch("render", "-p", "eager", "--model", LLAMA, "--dialect", dialect, *args, env=env)
    assert result.code == 0, result.err
    return result.json()


def tp(plan: Any) -> str | None:
    return next((a.split("=", 1)[1] for a in plan["argv"] if a.startswith("--tensor-parallel-size=")), None)


def test_device_plugin_devices_become_logical_indices(launch: Any) -> None:
    plan = render(launch, env={"ASCEND_VISIBLE_DEVICES": "4,5,6,7"})
    assert plan["env"]["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3"
    assert any(
        "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3: devices auto, 4 NPUs visible (ASCEND_VISIBLE_DEVICES=4,5,6,7 from the "
        "device plugin)" in i
        for i in plan["info"]
    )


@pytest.mark.parametrize(("plugin", "expected"), [("0-3", "0,1,2,3"), ("Ascend910-2,Ascend910-3", "0,1")])
def test_device_plugin_ranges_and_names(launch: Any, plugin: str, expected: str) -> None:
    assert render(launch, env={"ASCEND_VISIBLE_DEVICES": plugin})["env"]["ASCEND_RT_VISIBLE_DEVICES"] == expected


def test_dev_davinci_files_count_when_no_plugin(launch: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("davinci2", "davinci3", "davinci_manager", "devmm_svm", "hisi_hdc"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(host, "DEV_DIR", tmp_path)
    plan = render(launch, "--set", "vllm.tensor_parallel_size=auto")
    assert plan["env"]["ASCEND_RT_VISIBLE_DEVICES"] == "0,1" and tp(plan) == "2"
    assert any("(/dev/davinci2,3)" in i for i in plan["info"])


def test_container_variable_is_kept_and_counted(launch: Any) -> None:
    plan = render(
        launch,
        "--set",
        "vllm.tensor_parallel_size=auto",
        env={"ASCEND_VISIBLE_DEVICES": "0-7", "ASCEND_RT_VISIBLE_DEVICES": "4,5"},
    )
    assert "ASCEND_RT_VISIBLE_DEVICES" not in plan["env"]  # the container already has it
    assert tp(plan) == "2"
    assert any("tensor_parallel_size auto = 2: NPUs 4,5" in i for i in plan["info"])


def test_devices_setting_picks_npus(launch: Any) -> None:
    plan = render(
        launch,
        "--set",
        "vllm.tensor_parallel_size=auto",
        env={"ASCEND_VISIBLE_DEVICES": "0-7", "LAUNCH_DEVICES": "2,3"},
    )
    assert plan["env"]["ASCEND_RT_VISIBLE_DEVICES"] == "2,3" and tp(plan) == "2"
    assert plan["sources"]["devices"] == "LAUNCH_DEVICES"


def test_devices_from_a_profile_lose_to_the_container_and_say_so(launch: Any, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: [eager]\ndevices: [0, 1]\n")
    result = launch(
        "render", "-p", str(mine), "--model", LLAMA, "--dialect", ASCEND, env={"ASCEND_RT_VISIBLE_DEVICES": "6"}
    )
    plan = result.json()
    assert "ASCEND_RT_VISIBLE_DEVICES" not in plan["env"]
    assert any("ASCEND_RT_VISIBLE_DEVICES=6 in the environment wins over devices=0,1" in w for w in plan["warnings"])


def test_devices_given_with_set_beat_the_container(launch: Any) -> None:
    plan = render(launch, "--set", "devices=1", env={"ASCEND_RT_VISIBLE_DEVICES": "6"})
    assert plan["env"]["ASCEND_RT_VISIBLE_DEVICES"] == "1"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("0,x", "'x' is not a device index"), ("1,1", "device 1 is listed twice"), (",", "no devices listed")],
)
def test_bad_devices_text_is_exit_2(launch: Any, value: str, fragment: str) -> None:
    result = launch("render", "--model", LLAMA, "--dialect", ASCEND, env={"LAUNCH_DEVICES": value})
    assert result.code == 2
    assert f"devices = {value!r} (from LAUNCH_DEVICES): {fragment}" in result.err and "fix:" in result.err


def test_a_device_beyond_what_is_visible(launch: Any, node: Node) -> None:
    env = {"ASCEND_VISIBLE_DEVICES": "0,1"}
    plan = render(launch, "--set", "devices=0,3", env=env)
    assert any(
        "NPU 3 is not visible (2 NPUs visible (ASCEND_VISIBLE_DEVICES=0,1 from the device plugin): logical indices "
        "0..1), but devices (from --set devices=0,3) asks for it" in w
        for w in plan["warnings"]
    )
    node.install_cann().npu_smi("info-910prob-container.txt")
    checked = launch(
        "check", "--model", LLAMA, "--dialect", ASCEND, "--set", "devices=0,3", "--set", "vllm.port=0", env=node.env()
    )
    assert checked.code == 3 and "is not visible" in checked.err and "launch doctor" in checked.err


def test_more_parallelism_than_devices_is_refused(launch: Any) -> None:
    result = launch(
        "render",
        "--model",
        LLAMA,
        "--dialect",
        ASCEND,
        "--set",
        "vllm.tensor_parallel_size=2",
        "--set",
        "vllm.pipeline_parallel_size=2",
        env={"ASCEND_VISIBLE_DEVICES": "0,1,2"},
    )
    assert result.code == 2
    assert "more parallelism than NPUs: tensor 2 x pipeline 2 > 3 (ASCEND_RT_VISIBLE_DEVICES=0,1,2" in result.err
    assert "at most 1" in result.err


def test_ray_may_span_nodes_and_is_told_to_keep_the_variable(launch: Any) -> None:
    plan = render(
        launch,
        "--set",
        "vllm.tensor_parallel_size=4",
        "--set",
        "vllm.distributed_executor_backend=ray",
        env={"ASCEND_VISIBLE_DEVICES": "0,1"},
    )
    assert plan["env"]["RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES"] == "1"
    assert any("Ray cluster" in w for w in plan["warnings"])


def test_tensor_parallel_auto_with_nothing_visible(launch: Any, node: Node) -> None:
    plan = render(launch, "--set", "vllm.tensor_parallel_size=auto")
    assert tp(plan) is None and any("tensor_parallel_size auto needs visible NPUs" in w for w in plan["warnings"])
    node.install_cann().npu_smi("info-910prob-container.txt")
    env = {k: v for k, v in node.env().items() if k != "ASCEND_VISIBLE_DEVICES"}
    checked = launch("check", "--model", LLAMA, "--dialect", ASCEND, "--set", "vllm.tensor_parallel_size=auto", env=env)
    assert checked.code == 3 and "vllm.tensor_parallel_size = 'auto'" in checked.err


def test_nothing_visible_is_exit_3_at_check(launch: Any, node: Node) -> None:
    node.install_cann().npu_smi("info-910prob-container.txt")
    env = {k: v for k, v in node.env().items() if k != "ASCEND_VISIBLE_DEVICES"}
    checked = launch("check", "--model", LLAMA, "--dialect", ASCEND, "--set", "vllm.port=0", env=env)
    assert checked.code == 3 and "no NPU is visible" in checked.err and "huawei.com/ascend-1980" in checked.err


def test_cpu_build_takes_auto_parallelism_as_one(launch: Any) -> None:
    plan = render(launch, "--set", "vllm.tensor_parallel_size=auto", dialect="vllm-cpu")
    assert tp(plan) == "1" and "ASCEND_RT_VISIBLE_DEVICES" not in plan["env"]
    assert "LAUNCHER_INSTANCE" not in plan["env"]


def test_instance_marker_names_model_and_port(launch: Any) -> None:
    plan = render(launch, "--set", "vllm.port=9000")
    assert plan["env"]["LAUNCHER_INSTANCE"] == f"{LLAMA}@9000"


def test_bad_devices_text_is_refused_even_when_the_container_wins(launch: Any) -> None:
    result = launch(
        "render",
        "--model",
        LLAMA,
        "--dialect",
        ASCEND,
        env={"LAUNCH_DEVICES": "first", "ASCEND_RT_VISIBLE_DEVICES": "0"},
    )
    assert result.code == 2 and "'first' is not a device index" in result.err
