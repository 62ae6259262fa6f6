"""Precedence and provenance: defaults < profiles < --config < LAUNCH_* < command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import model

LLAMA = model("llama-tiny")


def render(launch: Any, *args: str, env: dict[str, str] | None = None) -> Any:
    result = launch("render", "--model", LLAMA, "--dialect", "ascend-vllm-0.6", *args, env=env)
    assert result.code == 0, result.err
    return result.json()


def test_each_layer_beats_the_one_below_and_says_so(launch: Any, tmp_path: Path) -> None:
    user = tmp_path / "site.yaml"
    user.write_text("vllm:\n  max_num_seqs: 64\n  max_num_batched_tokens: 2048\n  max_model_len: 1024\n")
    plan = render(
        launch,
        "-p",
        "eager",
        "--config",
        str(user),
        "--set",
        "vllm.max_model_len=2048",
        env={"LAUNCH_VLLM__MAX_NUM_BATCHED_TOKENS": "3072", "LAUNCH_VLLM__MAX_MODEL_LEN": "3000"},
    )
    argv, sources = plan["argv"], plan["sources"]
    assert "--max-num-seqs=64" in argv and sources["vllm.max_num_seqs"] == f"--config {user}"
    assert "--max-num-batched-tokens=3072" in argv
    assert sources["vllm.max_num_batched_tokens"] == "LAUNCH_VLLM__MAX_NUM_BATCHED_TOKENS"
    assert "--max-model-len=2048" in argv and sources["vllm.max_model_len"] == "--set vllm.max_model_len=2048"
    assert "--block-size=128" in argv and sources["vllm.block_size"].startswith("profile base (")
    assert sources["graph.mode"].startswith("profile eager (")
    assert sources["model"] == "--model"


def test_launch_config_variable_and_launch_profile(launch: Any, tmp_path: Path) -> None:
    user = tmp_path / "site.yaml"
    user.write_text("vllm:\n  max_num_seqs: 32\n")
    plan = render(launch, env={"LAUNCH_PROFILE": "base, prefix-caching", "LAUNCH_CONFIG": str(user)})
    assert plan["profiles"] == ["base", "eager", "prefix-caching"]
    assert "--enable-prefix-caching" in plan["argv"] and "--max-num-seqs=32" in plan["argv"]
    assert plan["sources"]["vllm.max_num_seqs"] == f"LAUNCH_CONFIG {user}"


def test_command_line_profiles_replace_launch_profile(launch: Any) -> None:
    plan = render(launch, "-p", "lora", env={"LAUNCH_PROFILE": "prefix-caching"})
    assert plan["profiles"] == ["base", "lora"]


def test_no_profile_means_base(launch: Any) -> None:
    assert render(launch)["profiles"] == ["base"]


def test_profiles_compose_in_order_with_extends_first(launch: Any) -> None:
    plan = render(launch, "-p", "lora", "-p", "prefix-caching")
    assert plan["profiles"] == ["base", "lora", "eager", "prefix-caching"]
    assert "--num-scheduler-steps=8" in plan["argv"] and "--enable-lora" in plan["argv"]


def test_null_removes_a_value_set_below(launch: Any) -> None:
    plan = render(launch, "-p", "eager", "--set", "vllm.num_scheduler_steps=null")
    assert not any(a.startswith("--num-scheduler-steps") for a in plan["argv"])
    assert "vllm.num_scheduler_steps" not in plan["sources"]


def test_launch_model_and_dialect_variables(launch: Any) -> None:
    result = launch("render", env={"LAUNCH_MODEL": LLAMA, "LAUNCH_DIALECT": "vllm-cpu", "LAUNCH_PROFILE": "cpu-dev"})
    assert result.code == 0, result.err
    plan = result.json()
    assert plan["dialect"] == "vllm-cpu" and f"--model={LLAMA}" in plan["argv"]
    assert plan["sources"]["model"] == "LAUNCH_MODEL" and plan["sources"]["dialect"] == "LAUNCH_DIALECT"


def test_container_variable_beats_profile_env_and_set_beats_container(launch: Any) -> None:
    plan = render(launch, "-p", "graph", env={"HCCL_OP_EXPANSION_MODE": "HOST"})
    assert "HCCL_OP_EXPANSION_MODE" not in plan["env"]
    assert any("HCCL_OP_EXPANSION_MODE=HOST from the container environment wins" in w for w in plan["warnings"])
    plan = render(
        launch,
        "-p",
        "graph",
        "--set",
        "env.HCCL_OP_EXPANSION_MODE=AIV",
        env={"HCCL_OP_EXPANSION_MODE": "HOST"},
    )
    assert plan["env"]["HCCL_OP_EXPANSION_MODE"] == "AIV"


def test_supervisor_settings_from_env_and_set(launch: Any) -> None:
    plan = render(
        launch,
        "--set",
        "supervisor.stop_timeout=20s",
        env={"LAUNCH_SUPERVISOR__RESTART": "never", "LAUNCH_SUPERVISOR__START_TIMEOUT": "45m"},
    )
    assert plan["supervisor"]["stop_timeout"] == 20.0
    assert plan["supervisor"]["restart"] == "never"
    assert plan["supervisor"]["start_timeout"] == 2700.0


def test_unknown_launch_variable_warns_with_a_suggestion(launch: Any) -> None:
    result = launch("render", "--model", LLAMA, "--dialect", "vllm-cpu", env={"LAUNCH_MODLE": "x"})
    assert result.code == 0
    assert any("LAUNCH_MODLE" in w and "LAUNCH_MODEL" in w for w in result.json()["warnings"])


def test_dashed_flag_names_are_accepted(launch: Any, tmp_path: Path) -> None:
    user = tmp_path / "u.yaml"
    user.write_text("vllm:\n  max-num-seqs: 16\n")
    plan = render(launch, "--config", str(user), "--set", "vllm.max-model-len=1024")
    assert "--max-num-seqs=16" in plan["argv"] and "--max-model-len=1024" in plan["argv"]


def test_user_profile_file_can_extend_builtins(launch: Any, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("description: mine\nextends: [prefix-caching]\nvllm:\n  max_num_seqs: 8\n")
    plan = render(launch, "-p", str(mine))
    assert plan["profiles"] == ["base", "eager", "prefix-caching", "mine"]
    assert "--max-num-seqs=8" in plan["argv"]
