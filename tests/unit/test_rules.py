"""Every rule from the guide: one configuration that passes, one that fails with a fixable message."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import adapter, model

A06 = "ascend-vllm-0.6"
TORCHAIR = "vllm-ascend-torchair"
ASCEND = "vllm-ascend"
CPU = "vllm-cpu"

# (id, args, env, message fragments). Each failing case names the key and the fix.
FAILS: list[tuple[str, list[str], dict[str, str], list[str]]] = [
    (
        "block size 16 on Ascend",
        [
            "--profile",
            "eager",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.block_size=16",
        ],
        {},
        ["vllm.block_size = 16", "--set vllm.block_size=16", "64 or 128"],
    ),
    (
        "multi-step with speculative",
        [
            "--profile",
            "eagle",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            f"speculative.model={model('eagle-draft-converted')}",
            "--set",
            "vllm.num_scheduler_steps=8",
        ],
        {},
        ["vllm.num_scheduler_steps = 8", "speculative", "num_scheduler_steps=null"],
    ),
    (
        "MoE graph with multi-step",
        ["--profile", "graph", "--model", model("mixtral-8x7b"), "--dialect", A06],
        {},
        ["vllm.num_scheduler_steps = 8", "profile graph", "MoE", "moe-graph"],
    ),
    (
        "graph with enforce_eager",
        [
            "--profile",
            "graph",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.enforce_eager=true",
        ],
        {},
        ["vllm.enforce_eager = True", "--set vllm.enforce_eager=true", "graph mode"],
    ),
    (
        "gear 1",
        ["--profile", "graph", "--model", model("llama-tiny"), "--dialect", A06],
        {"LAUNCH_GRAPH__DECODE_GEARS": "[1, 2, 4]"},
        ["graph.decode_gears", "LAUNCH_GRAPH__DECODE_GEARS", "must not contain 1", "remove 1"],
    ),
    (
        "graph on a chatglm model",
        ["--profile", "graph", "--model", model("chatglm3-6b"), "--dialect", A06],
        {},
        ["graph.mode = 'torchair'", "llama and qwen2", "chatglm", "--profile eager"],
    ),
    (
        "graph on several cards",
        [
            "--profile",
            "graph",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.tensor_parallel_size=2",
        ],
        {},
        ["vllm.tensor_parallel_size = 2", "single card"],
    ),
    (
        "graph with LoRA",
        [
            "--profile",
            "graph",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.enable_lora=true",
        ],
        {},
        ["vllm.enable_lora", "multi-LoRA", "--profile lora"],
    ),
    (
        "DeepSeek-V2-236B W8A8 with 6 gears",
        [
            "--profile",
            "moe-graph",
            "--model",
            model("deepseek-v2-236b-w8a8"),
            "--dialect",
            TORCHAIR,
        ],
        {},
        ["graph.decode_gears", "at most 4", "profile graph"],
    ),
    (
        "max_model_len above max_position_embeddings",
        [
            "--profile",
            "eager",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.max_model_len=8192",
        ],
        {},
        ["vllm.max_model_len = 8192", "max_position_embeddings = 4096", "at most 4096"],
    ),
    (
        "max_model_len above seq_length",
        ["--profile", "eager", "--model", model("baichuan-seq2048"), "--dialect", A06],
        {},
        ["vllm.max_model_len = 4096", "profile base", "seq_length = 2048", "at most 2048"],
    ),
    (
        "prefix precision explicitly off with long prefix caching",
        [
            "--profile",
            "prefix-caching",
            "--model",
            model("qwen2-1.5b"),
            "--dialect",
            A06,
            "--set",
            "vllm.max_model_len=16384",
            "--set",
            "env.USE_PREFIX_HIGH_PRECISION_MODE=0",
        ],
        {},
        ["env.USE_PREFIX_HIGH_PRECISION_MODE = '0'", "prefix caching", "must be 1"],
    ),
    (
        "Qwen2-7B with PFA switched off in the container",
        ["--profile", "eager", "--model", model("qwen2-7b"), "--dialect", A06],
        {"USE_PFA_HIGH_PRECISION_MODE": "0"},
        ["USE_PFA_HIGH_PRECISION_MODE", "the environment", "qwen2-7b", "must be 1"],
    ),
    (
        "LoRA rank 12",
        [
            "--profile",
            "lora",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.max_lora_rank=12",
        ],
        {},
        ["vllm.max_lora_rank = 12", "8, 16, 32 or 64"],
    ),
    (
        "64 LoRAs",
        ["--profile", "lora", "--model", model("llama-tiny"), "--dialect", A06, "--set", "vllm.max_loras=64"],
        {},
        ["vllm.max_loras = 64", "at most 32"],
    ),
    (
        "max_cpu_loras differs",
        [
            "--profile",
            "lora",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.max_cpu_loras=8",
        ],
        {},
        ["vllm.max_cpu_loras = 8", "must equal max_loras (32)"],
    ),
    (
        "LoRA module without =",
        [
            "--profile",
            "lora",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.lora_modules=sql",
        ],
        {},
        ["vllm.lora_modules = 'sql'", "name=path"],
    ),
    (
        "LoRA adapter rank above max_lora_rank",
        [
            "--profile",
            "lora",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            f"vllm.lora_modules=big={adapter('big-r128')}",
        ],
        {},
        ["rank 128", "max_lora_rank 16", "64"],
    ),
    (
        "LoRA adapter targeting embeddings",
        [
            "--profile",
            "lora",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            f"vllm.lora_modules=e={adapter('embed-targets')}",
        ],
        {},
        ["embed_tokens", "lm_head", "qkv_proj, o_proj, gate_up_proj, down_proj"],
    ),
    (
        "speculative without draft model",
        ["--profile", "eagle", "--model", model("llama-tiny"), "--dialect", ASCEND],
        {},
        ["speculative.model", "needs a draft model", "--set speculative.model="],
    ),
    (
        "speculative without token count",
        [
            "--profile",
            "base",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            f"vllm.speculative_model={model('llama-draft')}",
        ],
        {},
        ["speculative.num_tokens", "--set speculative.num_tokens=4"],
    ),
    (
        "draft on two cards",
        [
            "--profile",
            "base",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            f"vllm.speculative_model={model('llama-draft')}",
            "--set",
            "vllm.num_speculative_tokens=3",
            "--set",
            "vllm.speculative_draft_tensor_parallel_size=2",
        ],
        {},
        ["speculative.draft_tensor_parallel_size = 2", "set it to 1"],
    ),
    (
        "draft of another family",
        [
            "--profile",
            "base",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            f"speculative.model={model('qwen2-draft')}",
            "--set",
            "speculative.num_tokens=3",
        ],
        {},
        ["speculative.model", "qwen2", "llama", "same family"],
    ),
    (
        "unconverted EAGLE draft on 0.6",
        [
            "--profile",
            "eagle",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            f"speculative.model={model('llama-draft')}",
        ],
        {},
        ["speculative.model", "conversion", "convert_eagle_ckpt_to_vllm_compatible.py"],
    ),
    (
        "gptq on Ascend",
        [
            "--profile",
            "eager",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.quantization=gptq",
        ],
        {},
        ["vllm.quantization = 'gptq'", "awq, smoothquant"],
    ),
    (
        "float32 on Ascend",
        [
            "--profile",
            "eager",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.dtype=float32",
        ],
        {},
        ["vllm.dtype = 'float32'", "auto", "float16 or bfloat16"],
    ),
    (
        "tensor parallel above visible NPUs",
        [
            "--profile",
            "eager",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.tensor_parallel_size=4",
        ],
        {"ASCEND_RT_VISIBLE_DEVICES": "0,1"},
        ["vllm.tensor_parallel_size = 4", "ASCEND_RT_VISIBLE_DEVICES=0,1", "at most 2"],
    ),
    (
        "unknown executor backend",
        [
            "--profile",
            "eager",
            "--model",
            model("llama-tiny"),
            "--dialect",
            A06,
            "--set",
            "vllm.distributed_executor_backend=threads",
        ],
        {},
        ["vllm.distributed_executor_backend = 'threads'", "mp, ray"],
    ),
    (
        "bad NPU allocator setting",
        ["--profile", "multimodal-llava", "--model", model("llava-1.5-7b"), "--dialect", A06],
        {"PYTORCH_NPU_ALLOC_CONF": "garbage"},
        ["env.PYTORCH_NPU_ALLOC_CONF = 'garbage'", "expandable_segments:True"],
    ),
    (
        "legacy api_server on recent vLLM",
        [
            "--profile",
            "eager",
            "--model",
            model("llama-tiny"),
            "--dialect",
            ASCEND,
            "--set",
            "entrypoint=api_server",
        ],
        {},
        ["entrypoint = 'api_server'", "--set entrypoint=api_server", "removed", "entrypoint: openai"],
    ),
    (
        "graph profile on the CPU build",
        ["--profile", "graph", "--model", model("llama-tiny"), "--dialect", CPU],
        {},
        ["dialect = 'vllm-cpu'", "profile graph", "does not support"],
    ),
]


@pytest.mark.parametrize(("args", "env", "fragments"), [c[1:] for c in FAILS], ids=[c[0] for c in FAILS])
def test_rule_refuses_with_a_fix(launch: Any, args: list[str], env: dict[str, str], fragments: list[str]) -> None:
    result = launch("render", *args, env=env)
    assert result.code == 2, result.err
    assert result.out == ""
    assert "fix:" in result.err
    for fragment in fragments:
        assert fragment in result.err


def env_of(result: Any) -> dict[str, str]:
    assert result.code == 0, result.err
    env: dict[str, str] = result.json()["env"]
    return env


def argv_of(result: Any) -> list[str]:
    assert result.code == 0, result.err
    argv: list[str] = result.json()["argv"]
    return argv


def test_block_size_64_and_128_pass(launch: Any) -> None:
    for size in ("64", "128"):
        argv = argv_of(
            launch(
                "render",
                "-p",
                "eager",
                "--model",
                model("llama-tiny"),
                "--dialect",
                A06,
                "--set",
                f"vllm.block_size={size}",
            )
        )
        assert f"--block-size={size}" in argv


def test_block_size_is_free_on_cpu(launch: Any) -> None:
    argv = argv_of(
        launch(
            "render",
            "-p",
            "cpu-dev",
            "--model",
            model("llama-tiny"),
            "--dialect",
            CPU,
            "--set",
            "vllm.block_size=16",
        )
    )
    assert "--block-size=16" in argv


def test_gears_above_max_num_seqs_are_dropped_with_a_warning(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "graph",
        "--model",
        model("llama-tiny"),
        "--dialect",
        A06,
        "--set",
        "vllm.max_num_seqs=12",
    )
    assert env_of(result)["PTA_TORCHAIR_DECODE_GEAR_LIST"] == "2,4,6,8,12"
    warnings = result.json()["warnings"]
    assert any("dropped 16, 32" in w and "max_num_seqs=12" in w for w in warnings), warnings


def test_gears_within_max_num_seqs_are_kept(launch: Any) -> None:
    result = launch("render", "-p", "graph", "--model", model("llama-tiny"), "--dialect", A06)
    assert env_of(result)["PTA_TORCHAIR_DECODE_GEAR_LIST"] == "2,4,6,8,16,32"
    assert not any("gears" in w for w in result.json()["warnings"])


def test_deepseek_w8a8_four_gears_get_the_long_timeout(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "moe-graph",
        "--model",
        model("deepseek-v2-236b-w8a8"),
        "--dialect",
        TORCHAIR,
        "--set",
        "graph.decode_gears=[2,4,8,16]",
    )
    env = env_of(result)
    assert env["VLLM_ENGINE_ITERATION_TIMEOUT_S"] == "6000"
    assert any("6000" in i and "DeepSeek" in i for i in result.json()["info"])


def test_moe_in_eager_mode_is_warned_towards_graph(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "eager",
        "--model",
        model("mixtral-8x7b"),
        "--dialect",
        A06,
        "--set",
        "vllm.num_scheduler_steps=null",
    )
    assert result.code == 0, result.err
    assert any("moe-graph" in w for w in result.json()["warnings"])


def test_moe_graph_needs_mindspeed_at_check_time(launch: Any) -> None:
    result = launch(
        "check", "-p", "moe-graph", "--model", model("mixtral-8x7b"), "--dialect", A06, "--set", "vllm.port=0"
    )
    assert result.code == 3
    assert "MindSpeed" in result.err and "gitee.com/ascend/MindSpeed" in result.err
    rendered = launch("render", "-p", "moe-graph", "--model", model("mixtral-8x7b"), "--dialect", A06)
    assert rendered.code == 0 and any("MindSpeed" in w for w in rendered.json()["warnings"])


def test_max_model_len_within_limits_passes(launch: Any) -> None:
    argv = argv_of(
        launch(
            "render",
            "-p",
            "eager",
            "--model",
            model("qwen2-7b"),
            "--dialect",
            A06,
            "--set",
            "vllm.max_model_len=32768",
        )
    )
    assert "--max-model-len=32768" in argv


@pytest.mark.parametrize(
    ("name", "extra", "expected"),
    [
        ("qwen2-7b", [], {"USE_PFA_HIGH_PRECISION_MODE": "1"}),
        ("qwen2-57b-a14b", [], {"USE_PFA_HIGH_PRECISION_MODE": "1"}),
        ("qwen2-72b", [], {}),
        ("qwen2-72b", ["--set", "vllm.max_model_len=16384"], {"USE_IFA_HIGH_PRECISION_MODE": "1"}),
        (
            "qwen2-7b",
            ["--set", "vllm.max_model_len=16384"],
            {"USE_PFA_HIGH_PRECISION_MODE": "1", "USE_IFA_HIGH_PRECISION_MODE": "1"},
        ),
        (
            "qwen2-72b",
            ["--set", "vllm.enable_prefix_caching=true"],
            {"USE_PREFIX_HIGH_PRECISION_MODE": "1"},
        ),
        ("qwen2-1.5b", ["--set", "vllm.enable_prefix_caching=true"], {}),
        (
            "qwen2-1.5b",
            ["--set", "vllm.enable_prefix_caching=true", "--set", "vllm.max_model_len=16384"],
            {"USE_PREFIX_HIGH_PRECISION_MODE": "1"},
        ),
        ("llama-tiny", [], {}),
    ],
)
def test_high_precision_variables_only_where_the_guide_asks(
    launch: Any, name: str, extra: list[str], expected: dict[str, str]
) -> None:
    result = launch("render", "-p", "eager", "--model", model(name), "--dialect", A06, *extra)
    env = env_of(result)
    got = {k: v for k, v in env.items() if k.endswith("HIGH_PRECISION_MODE")}
    assert got == expected
    for key in expected:
        assert any(line.startswith(f"set {key}=1:") for line in result.json()["info"])


def test_high_precision_variables_are_not_set_on_cpu(launch: Any) -> None:
    env = env_of(launch("render", "-p", "cpu-dev", "--model", model("qwen2-7b"), "--dialect", CPU))
    assert not any(k.endswith("HIGH_PRECISION_MODE") for k in env)


def test_high_precision_on_other_models_is_a_warning(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "eager",
        "--model",
        model("llama-tiny"),
        "--dialect",
        A06,
        "--set",
        "env.USE_PFA_HIGH_PRECISION_MODE=1",
    )
    assert result.code == 0
    assert any("5–10%" in w for w in result.json()["warnings"])


def test_valid_lora_adapters_render(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "lora",
        "--model",
        model("llama-tiny"),
        "--dialect",
        A06,
        "--set",
        f"vllm.lora_modules=sql={adapter('sql-r16')} chat={adapter('chat-r8')}",
    )
    argv = argv_of(result)
    i = argv.index("--lora-modules")
    assert argv[i + 1 : i + 3] == [f"sql={adapter('sql-r16')}", f"chat={adapter('chat-r8')}"]
    assert "--enable-lora" in argv and "--max-cpu-loras=32" in argv


def test_lora_modules_switch_lora_on_and_max_cpu_loras_follows(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "eager",
        "--model",
        model("llama-tiny"),
        "--dialect",
        A06,
        "--set",
        f"vllm.lora_modules=sql={adapter('sql-r16')}",
        "--set",
        "vllm.max_loras=4",
    )
    argv = argv_of(result)
    assert "--enable-lora" in argv and "--max-cpu-loras=4" in argv
    info = result.json()["info"]
    assert any("enable_lora" in i for i in info) and any("max_cpu_loras=4" in i for i in info)


def test_missing_adapter_is_exit_3_at_check_and_a_warning_at_render(launch: Any) -> None:
    args = [
        "-p",
        "lora",
        "--model",
        model("llama-tiny"),
        "--dialect",
        A06,
        "--set",
        "vllm.lora_modules=x=/nonexistent/adapter",
        "--set",
        "vllm.port=0",
    ]
    assert launch("check", *args).code == 3
    rendered = launch("render", *args)
    assert rendered.code == 0 and any("adapter_config.json" in w for w in rendered.json()["warnings"])


def test_missing_draft_model_is_exit_3_at_check(launch: Any) -> None:
    result = launch(
        "check",
        "-p",
        "eagle",
        "--model",
        model("llama-tiny"),
        "--dialect",
        ASCEND,
        "--set",
        "speculative.model=/nonexistent/draft",
        "--set",
        "vllm.port=0",
    )
    assert result.code == 3
    assert "draft model" in result.err and "/nonexistent/draft" in result.err


def test_eagle_on_06_sets_the_lab_style_variables(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "eagle",
        "--model",
        model("llama-tiny"),
        "--dialect",
        A06,
        "--set",
        f"speculative.model={model('eagle-draft-converted')}",
    )
    env = env_of(result)
    assert env["EAGLE_USE_SAFE_AI_LAB_STYLE"] == "1" and env["ENABLE_SPEC_METRIC"] == "0"
    argv = argv_of(result)
    assert f"--speculative-model={model('eagle-draft-converted')}" in argv
    assert "--num-speculative-tokens=4" in argv
    assert "--speculative-draft-tensor-parallel-size=1" in argv


def test_same_family_draft_passes(launch: Any) -> None:
    argv = argv_of(
        launch(
            "render",
            "-p",
            "base",
            "--model",
            model("qwen2-7b"),
            "--dialect",
            A06,
            "--set",
            f"speculative.model={model('qwen2-draft')}",
            "--set",
            "speculative.num_tokens=3",
        )
    )
    assert f"--speculative-model={model('qwen2-draft')}" in argv


def test_awq_and_smoothquant_pass_on_ascend(launch: Any) -> None:
    for method in ("awq", "smoothquant"):
        argv = argv_of(
            launch(
                "render",
                "-p",
                "eager",
                "--model",
                model("llama-tiny"),
                "--dialect",
                A06,
                "--set",
                f"vllm.quantization={method}",
                "--set",
                "vllm.dtype=float16",
            )
        )
        assert f"--quantization={method}" in argv and "--dtype=float16" in argv


def test_tensor_parallel_within_visible_npus_and_ray_pass(launch: Any) -> None:
    result = launch(
        "render",
        "-p",
        "eager",
        "--model",
        model("llama-tiny"),
        "--dialect",
        A06,
        "--set",
        "vllm.tensor_parallel_size=2",
        "--set",
        "vllm.distributed_executor_backend=ray",
        env={"ASCEND_RT_VISIBLE_DEVICES": "0,1"},
    )
    argv = argv_of(result)
    assert "--tensor-parallel-size=2" in argv and "--distributed-executor-backend=ray" in argv


def test_llava_profile_sets_the_guide_variables(launch: Any, tmp_path: Any) -> None:
    template = tmp_path / "template_llava.jinja"
    template.write_text("{{ messages }}")
    result = launch(
        "render",
        "-p",
        "multimodal-llava",
        "--model",
        model("llava-1.5-7b"),
        "--dialect",
        A06,
        "--set",
        f"vllm.chat_template={template}",
        "--set",
        "vllm.dtype=bfloat16",
    )
    env = env_of(result)
    assert env == {
        "LAUNCHER_INSTANCE": f"{model('llava-1.5-7b')}@8080",
        "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
        "VLLM_ENGINE_ITERATION_TIMEOUT_S": "600",
        "VLLM_IMAGE_FETCH_TIMEOUT": "100",
    }
    assert f"--chat-template={template}" in argv_of(result)
    assert result.json()["warnings"] == []


def test_missing_chat_template_is_exit_3_at_check(launch: Any) -> None:
    result = launch(
        "check",
        "-p",
        "multimodal-llava",
        "--model",
        model("llava-1.5-7b"),
        "--dialect",
        A06,
        "--set",
        "vllm.chat_template=/nowhere/template_llava.jinja",
        "--set",
        "vllm.port=0",
    )
    assert result.code == 3 and "chat template" in result.err
