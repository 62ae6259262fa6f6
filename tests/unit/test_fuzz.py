"""Random profiles, --set values and LAUNCH_* values: a valid plan, or exit 2/3 with a message —
never a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import model

KEYS = [
    "vllm",
    "env",
    "graph",
    "speculative",
    "supervisor",
    "extends",
    "entrypoint",
    "dialects",
    "model",
    "server_command",
    "status_port",
    "log_level",
    "description",
    "bogus",
]
VLLM_KEYS = [
    "max_model_len",
    "max_num_seqs",
    "block_size",
    "enable_prefix_caching",
    "lora_modules",
    "max_lora_rank",
    "max_loras",
    "max_cpu_loras",
    "num_scheduler_steps",
    "quantization",
    "dtype",
    "tensor_parallel_size",
    "speculative_model",
    "num_speculative_tokens",
    "speculative_config",
    "additional_config",
    "api_key",
    "enforce_eager",
    "host",
    "port",
    "made_up_flag",
]
SECTION_KEYS = {
    "graph": ["mode", "decode_gears", "other"],
    "speculative": ["method", "model", "num_tokens", "draft_tensor_parallel_size"],
    "supervisor": ["restart", "stop_timeout", "max_restarts", "warmup", "health_interval"],
    "env": ["USE_PFA_HIGH_PRECISION_MODE", "PYTORCH_NPU_ALLOC_CONF", "HF_TOKEN", "X"],
}

plausible = st.sampled_from(["8192", "64", "true", "false", "null", "2,4,8", "awq", "float16", "mp", "never", "30s"])
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.sampled_from(["torchair", "eager", "auto", "never", "awq", "1", "2,4", "[2, 4]", "/nonexistent", "128"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def documents(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True)):
        if key == "vllm":
            doc[key] = draw(st.dictionaries(st.sampled_from(VLLM_KEYS), values, max_size=4))
        elif key in SECTION_KEYS:
            doc[key] = draw(st.dictionaries(st.sampled_from(SECTION_KEYS[key]), values, max_size=3) | values)
        else:
            doc[key] = draw(values)
    return doc


set_keys = st.sampled_from(
    ["vllm." + k for k in VLLM_KEYS]
    + [
        "graph.mode",
        "graph.decode_gears",
        "supervisor.stop_timeout",
        "env.HF_TOKEN",
        "speculative.num_tokens",
        "bogus.key",
        "vllm",
        "",
    ]
)
sets = st.lists(
    st.builds(
        lambda k, sep, v: f"{k}{sep}{v}",
        set_keys,
        st.sampled_from(["=", "=", "=", "", "=="]),
        plausible | text,
    ),
    max_size=3,
)
env_names = st.sampled_from(
    [
        "LAUNCH_VLLM__MAX_MODEL_LEN",
        "LAUNCH_SUPERVISOR__RESTART",
        "LAUNCH_STATUS_PORT",
        "LAUNCH_GRAPH__DECODE_GEARS",
        "LAUNCH_GRAPH",
        "LAUNCH_VLLM",
        "LAUNCH_PROFILE",
        "LAUNCH_DIALECT",
        "LAUNCH_SERVER_COMMAND",
        "LAUNCH_LOG_LEVEL",
    ]
)
environments = st.dictionaries(env_names, plausible | text, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(st.just({}), documents()), assignments=sets, env=environments, raw=st.booleans())
def test_random_input_gives_a_plan_or_a_message(
    launch: Any, document: dict[str, Any], assignments: list[str], env: dict[str, str], raw: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        if raw:
            path.write_text(json.dumps(document, default=str)[::-1])  # garbage that may or may not parse
        else:
            path.write_text(yaml.safe_dump(document, allow_unicode=True))
        args = ["render", "-p", str(path), "--model", model("llama-tiny"), "--dialect", "ascend-vllm-0.6"]
        for item in assignments:
            args += ["--set", item]
        result = launch(*args, env=env)
    event(f"exit {result.code}")
    assert result.code in (0, 2, 3), result.err
    if result.code == 0:
        plan = json.loads(result.out)
        assert plan["argv"] and all(isinstance(a, str) for a in plan["argv"])
    else:
        assert result.err.startswith("launch: error: ") and result.out == ""
    assert "Traceback" not in result.err
