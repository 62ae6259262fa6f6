"""Golden plans: every built-in profile for every dialect it supports, and what users see of them.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/unit/test_render.py` and
read the diff before committing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from launcher import dialects, profiles
from tests.support import REPO, adapter, model

GOLDEN = REPO / "tests" / "golden"

# The model and settings each profile is shown with (a profile that needs input gets it here).
EXAMPLES: dict[str, list[str]] = {
    "base": ["--model", model("llama-tiny")],
    "eager": ["--model", model("qwen2-7b")],
    "graph": ["--model", model("qwen2-7b")],
    "moe-graph": ["--model", model("mixtral-8x7b")],
    "eagle": ["--model", model("llama-tiny"), "--set", f"speculative.model={model('eagle-draft-converted')}"],
    "lora": [
        "--model",
        model("llama-tiny"),
        "--set",
        f"vllm.lora_modules=sql={adapter('sql-r16')} chat={adapter('chat-r8')}",
    ],
    "prefix-caching": ["--model", model("qwen2-72b"), "--set", "vllm.max_model_len=16384"],
    "multimodal-llava": ["--model", model("llava-1.5-7b")],
    "api-server": ["--model", model("llama-tiny")],
    "cpu-dev": ["--model", model("llama-tiny")],
}


def supported(name: str) -> list[str]:
    document = profiles.read_document(profiles.builtin_dir() / f"{name}.yaml")
    chain = profiles.expand([name])
    allowed = set(dialects.DIALECTS)
    for p in chain:
        if p.document.get("dialects"):
            allowed &= set(p.document["dialects"])
    assert document is not None
    return [d for d in dialects.DIALECTS if d in allowed]


CASES = [(p, d) for p in profiles.builtin_names() for d in supported(p)]


def normalise(plan: dict[str, Any]) -> dict[str, Any]:
    """Make a plan independent of the machine: the interpreter path and the checkout location."""
    text = json.dumps(plan, indent=2, ensure_ascii=False, sort_keys=True)
    text = text.replace(json.dumps(sys.executable)[1:-1], "<python>").replace(str(REPO), "<repo>")
    result: dict[str, Any] = json.loads(text)
    return result


def test_every_profile_has_an_example_and_a_description() -> None:
    assert sorted(EXAMPLES) == profiles.builtin_names()
    for name in profiles.builtin_names():
        assert profiles.load(name).description, name


@pytest.mark.parametrize(("profile", "dialect"), CASES, ids=[f"{p}@{d}" for p, d in CASES])
def test_golden_plan(launch: Any, profile: str, dialect: str) -> None:
    result = launch("render", "-p", profile, "--dialect", dialect, *EXAMPLES[profile])
    assert result.code == 0, result.err
    plan = normalise(result.json())
    path = GOLDEN / f"{profile}@{dialect}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(plan, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    assert path.exists(), f"no golden plan {path.name}: run with UPDATE_GOLDEN=1 and review it"
    assert plan == json.loads(path.read_text())


def test_no_stale_golden_files() -> None:
    expected = {f"{p}@{d}.json" for p, d in CASES}
    assert {p.name for p in GOLDEN.glob("*.json")} == expected


@pytest.mark.parametrize(
    ("profile", "dialect"),
    [(p, d) for p in profiles.builtin_names() for d in dialects.DIALECTS if d not in supported(p)],
)
def test_unsupported_combinations_are_refused(launch: Any, profile: str, dialect: str) -> None:
    result = launch("render", "-p", profile, "--dialect", dialect, *EXAMPLES[profile])
    assert result.code == 2
    assert "does not support dialect" in result.err and "fix:" in result.err


def test_guide_script_equivalent(launch: Any) -> None:
    """The eager profile on the guide's vLLM is the guide's run_vllm.sh, flag for flag."""
    result = launch(
        "render",
        "-p",
        "eager",
        "--dialect",
        "ascend-vllm-0.6",
        "--model",
        "/models/qwen2-7b",
        "--format",
        "shell",
    )
    assert result.code == 0
    guide = [
        "--max-num-seqs=256",
        "--max-model-len=4096",
        "--max-num-batched-tokens=4096",
        "--tensor-parallel-size=1",
        "--block-size=128",
        "--host=0.0.0.0",
        "--port=8080",
        "--gpu-memory-utilization=0.9",
        "--num-scheduler-steps=8",
        "--trust-remote-code",
        "--enforce-eager",
    ]
    for flag in guide:
        assert f"  {flag}" in result.out
    assert "-m vllm.entrypoints.openai.api_server" in result.out
    assert "--model=/models/qwen2-7b" in result.out


def test_shell_script_is_valid_bash_and_exports_the_env(launch: Any, tmp_path: Path) -> None:
    result = launch(
        "render",
        "-p",
        "graph",
        "--dialect",
        "ascend-vllm-0.6",
        "--model",
        model("qwen2-7b"),
        "--format",
        "shell",
    )
    script = tmp_path / "run_vllm.sh"
    script.write_text(result.out)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "export INFER_MODE=PTA" in result.out
    assert "export PTA_TORCHAIR_DECODE_GEAR_LIST=2,4,6,8,16,32" in result.out
    assert "export USE_PFA_HIGH_PRECISION_MODE=1" in result.out
    assert "# set USE_PFA_HIGH_PRECISION_MODE=1: qwen2-7b" in result.out


def test_shell_script_runs_the_plan(launch: Any, tmp_path: Path) -> None:
    """Run the rendered script with a stand-in server that prints its argv and env."""
    echo = tmp_path / "echo_server.py"
    echo.write_text(
        "import json, os, sys\nprint(json.dumps({'argv': sys.argv[1:], 'mode': os.environ.get('INFER_MODE')}))\n"
    )
    result = launch(
        "render",
        "-p",
        "graph",
        "--dialect",
        "ascend-vllm-0.6",
        "--model",
        model("llama-tiny"),
        "--format",
        "shell",
        env={"LAUNCH_SERVER_COMMAND": f"{sys.executable} {echo}"},
    )
    script = tmp_path / "run.sh"
    script.write_text(result.out)
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True)
    seen = json.loads(ran.stdout)
    assert seen["mode"] == "PTA"
    assert seen["argv"][0] == f"--model={model('llama-tiny')}" and "--block-size=128" in seen["argv"]


def test_extra_args_reach_vllm_verbatim(launch: Any) -> None:
    result = launch(
        "render",
        "--model",
        model("llama-tiny"),
        "--dialect",
        "vllm-cpu",
        "--",
        "--served-model-name",
        "my model",
        "--weird=a b",
    )
    argv = result.json()["argv"]
    assert argv[-3:] == ["--served-model-name", "my model", "--weird=a b"]


def test_secrets_are_masked_in_json_shell_and_logs(launch: Any) -> None:
    args = [
        "--model",
        model("llama-tiny"),
        "--dialect",
        "vllm-cpu",
        "--set",
        "vllm.api_key=sk-topsecret",
        "--set",
        "env.HF_TOKEN=hf_abcdef",
        "--set",
        "vllm.max_num_seq=3",
    ]
    as_json = launch("render", *args)
    as_shell = launch("render", *args, "--format", "shell")
    for result in (as_json, as_shell):
        assert result.code == 0, result.err
        assert "sk-topsecret" not in result.out + result.err
        assert "hf_abcdef" not in result.out + result.err
    plan = as_json.json()
    assert "--api-key" in plan["argv"] and plan["argv"][plan["argv"].index("--api-key") + 1] == "***"
    assert plan["env"]["HF_TOKEN"] == "***"
    assert "export HF_TOKEN='***'" in as_shell.out


def test_served_model_name_and_health_url(launch: Any) -> None:
    plan = launch(
        "render",
        "--model",
        model("llama-tiny"),
        "--dialect",
        "vllm-cpu",
        "--set",
        "vllm.port=9000",
        "--set",
        "vllm.host=127.0.0.2",
    ).json()
    assert plan["health_url"] == "http://127.0.0.2:9000/health"
