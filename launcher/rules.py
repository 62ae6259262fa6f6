"""The guide's rules as checks on a draft plan. Pure: they read the draft, correct it where the guide
says what to do (with a warning or info line that names the change), or raise with the fix.

Each rule says why in its docstring; the wording of errors names the key, its value, where it came
from and what to change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.cann import TOOLKIT_FIX
from launcher.devices import INDEX_FIX, INSTANCE_VARIABLE, NO_NPU_FIX, RT_VARIABLE, Selection, instance_id, select
from launcher.dialects import Dialect
from launcher.errors import ConfigError, PreflightError
from launcher.host import HostFacts
from launcher.modelinfo import GRAPH_FAMILIES, ModelDirError, ModelInfo, read_json

ASCEND_BLOCK_SIZES = (64, 128)
LORA_RANKS = (8, 16, 32, 64)
MAX_LORAS = 32
# HF adapters name the unpacked projections; vLLM packs them into qkv_proj and gate_up_proj.
LORA_TARGETS = frozenset(
    {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
)
QUANTIZATION_06 = ("awq", "smoothquant")
QUANTIZATION_ASCEND = ("awq", "smoothquant", "ascend")
ASCEND_DTYPES = ("auto", "float16", "bfloat16")
BACKENDS = ("mp", "ray")
LONG_SEQUENCE = 8192  # the guide's threshold for prefix caching; used for "long sequences" too
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default when the profile sets none
DEFAULT_MAX_LORA_RANK = 16


@dataclass
class Draft:
    """A plan being built: typed vLLM flags, semantic sections, planned environment, notes."""

    dialect: Dialect
    entrypoint: str
    model_path: str
    model: ModelInfo | None
    vllm: dict[str, Any]
    graph_mode: str
    gears: list[int] | None
    spec: dict[str, Any] | None
    env: dict[str, str]
    env_sources: dict[str, str]
    host: HostFacts
    strict: bool  # check/run: missing files are preflight failures; render: warnings
    source_of: Callable[[str], str | None]
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    devices: str = "auto"  # the `devices` setting
    tp_auto: bool = False  # tensor_parallel_size: auto (the planner put a placeholder in vllm)
    env_files: list[str] = field(default_factory=list)
    selection: Selection | None = None  # set by the devices rule on Ascend
    nodes: int = 1  # a multi-node role spreads vLLM over this many nodes' NPUs

    def src(self, key: str) -> str | None:
        return self.source_of(key)

    def missing(self, what: str, *, key: str, value: Any, fix: str) -> None:
        """A file the configuration points at is absent: exit 3 when starting, a warning when rendering."""
        if self.strict:
            raise PreflightError(what, key=key, value=value, source=self.src(key), fix=fix)
        self.warnings.append(f"{key} = {value!r}: {what} (checked again by `launch check` and `run`)")

    def require_env(self, name: str, value: str, why: str) -> None:
        """Set a variable the guide requires; an explicit different value is a configuration error."""
        current = self.env.get(name)
        host = self.host.environ.get(name)
        for have, where in ((current, self.env_sources.get(name, "a profile")), (host, "the environment")):
            if have is not None and have != value:
                raise ConfigError(
                    f"{why}, so it must be {value}",
                    key=f"env.{name}",
                    value=have,
                    source=where,
                    fix=f"remove {name}={have} or set {name}={value}",
                )
        if current is None and host is None:
            self.env[name] = value
            self.env_sources[name] = "rule"
            self.info.append(f"set {name}={value}: {why}")

    def container_wins(self, name: str) -> bool:
        """A variable already in the container beats a profile's (the operator set it on purpose); one
        set with --set on the command line beats the container."""
        return name in self.host.environ and not self.env_sources.get(name, "").startswith("--set")

    def effective_env(self, name: str) -> tuple[str | None, str]:
        """The value the child will see and where it comes from."""
        if self.container_wins(name):
            return self.host.environ[name], "the environment"
        return self.env.get(name), self.env_sources.get(name, "a profile")

    def max_num_seqs(self) -> int:
        value = self.vllm.get("max_num_seqs")
        return value if isinstance(value, int) else DEFAULT_MAX_NUM_SEQS


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------------


def entrypoint(d: Draft) -> None:
    """`api_server` (the legacy /generate server) exists only in the 0.6 dialect; recent vLLM removed it."""
    if d.entrypoint == "api_server" and not d.dialect.legacy_api_server:
        raise ConfigError(
            f"vllm.entrypoints.api_server (/generate) does not exist in {d.dialect.name}: "
            "recent vLLM removed the legacy server",
            key="entrypoint",
            value=d.entrypoint,
            source=d.src("entrypoint"),
            fix="use entrypoint: openai (the OpenAI server: /v1/completions), or --dialect ascend-vllm-0.6",
        )


def npu_devices(d: Draft) -> None:
    """The NPUs vLLM gets (`devices: auto | "0,1"`) as ASCEND_RT_VISIBLE_DEVICES, `tensor_parallel_size:
    auto` as their count, Ray told to leave that variable alone, and the marker that lets a later start
    recognise this launcher's leftover processes. Off Ascend, auto parallelism is 1."""
    tp_key = "vllm.tensor_parallel_size"
    if not d.dialect.ascend:
        if d.tp_auto:
            d.vllm["tensor_parallel_size"] = 1
            d.info.append(f"tensor_parallel_size auto = 1: {d.dialect.name} has no NPUs")
        return
    sel = select(d.devices, d.src("devices"), d.host.runtime_environ, d.host.npus, d.host.npus_source)
    d.selection = sel
    if sel.env is not None:
        d.env[RT_VARIABLE] = sel.env
        d.env_sources[RT_VARIABLE] = d.src("devices") or "devices auto"
    d.info.extend(sel.notes)
    d.warnings.extend(sel.warnings)
    if sel.problem:
        d.missing(
            sel.problem,
            key="devices",
            value=d.devices,
            fix=f"{INDEX_FIX}, or request more NPUs for the pod",
        )
    if d.tp_auto:
        if sel.indices:
            d.vllm["tensor_parallel_size"] = len(sel.indices)
            d.info.append(f"tensor_parallel_size auto = {len(sel.indices)}: NPUs {sel.text} ({sel.source})")
        else:
            del d.vllm["tensor_parallel_size"]
            d.missing(
                "tensor_parallel_size auto needs visible NPUs, and none are visible here",
                key=tp_key,
                value="auto",
                fix="run where the NPUs are mounted (the device plugin sets ASCEND_VISIBLE_DEVICES), or give a number",
            )
    if d.vllm.get("distributed_executor_backend") == "ray":
        d.require_env(
            "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES",
            "1",
            "with the ray backend Ray would otherwise rewrite ASCEND_RT_VISIBLE_DEVICES for each worker",
        )
    port = d.vllm.get("port")
    d.env[INSTANCE_VARIABLE] = instance_id(d.model_path, port if isinstance(port, int) else 8000)
    d.env_sources[INSTANCE_VARIABLE] = "launcher"


def block_size(d: Draft) -> None:
    """Ascend's attention kernels support KV blocks of 64 or 128 tokens (128 recommended)."""
    value = d.vllm.get("block_size")
    if d.dialect.ascend and value is not None and value not in ASCEND_BLOCK_SIZES:
        raise ConfigError(
            "Ascend supports block_size 64 or 128 only",
            key="vllm.block_size",
            value=value,
            source=d.src("vllm.block_size"),
            fix="set vllm.block_size to 128 (recommended) or 64",
        )


def multi_step(d: Draft) -> None:
    """Multi-step scheduling fails at start-up with speculative decoding, and MoE graph mode lacks it."""
    steps = _int(d.vllm.get("num_scheduler_steps"))
    if not steps or steps <= 1:
        return
    if d.spec is not None:
        raise ConfigError(
            "multi-step scheduling cannot be combined with speculative decoding (vLLM fails at start-up)",
            key="vllm.num_scheduler_steps",
            value=steps,
            source=d.src("vllm.num_scheduler_steps"),
            fix="remove it: --set vllm.num_scheduler_steps=null (the eagle profile does)",
        )
    if d.model is not None and d.model.is_moe and d.graph_mode == "torchair":
        raise ConfigError(
            "MoE models in graph mode do not support multi-step scheduling",
            key="vllm.num_scheduler_steps",
            value=steps,
            source=d.src("vllm.num_scheduler_steps"),
            fix="use --profile moe-graph (which unsets it) or --set vllm.num_scheduler_steps=null",
        )


def graph(d: Draft) -> None:
    """Graph (PTA/torchair) mode: no --enforce-eager; gears never 1 and at most max_num_seqs; llama and
    qwen2 on one card without LoRA; MoE models should use it and need MindSpeed on the 0.6 dialect."""
    mode = d.graph_mode
    if mode not in d.dialect.graph_modes:
        raise ConfigError(
            f"{d.dialect.name} has no {mode} graph mode (it supports: {', '.join(sorted(d.dialect.graph_modes))})",
            key="graph.mode",
            value=mode,
            source=d.src("graph.mode"),
            fix="use a profile made for this dialect (`launch profiles`), e.g. --profile eager",
        )
    is_graph = mode in ("torchair", "aclgraph")
    if is_graph and d.vllm.get("enforce_eager") is True:
        raise ConfigError(
            "graph mode cannot run with --enforce-eager (it turns graph mode off)",
            key="vllm.enforce_eager",
            value=True,
            source=d.src("vllm.enforce_eager"),
            fix="remove enforce_eager (--set vllm.enforce_eager=null) or use --profile eager",
        )
    if d.gears is not None:
        _gears(d)
    if d.model is None:
        return
    if mode == "torchair" and not d.model.is_moe:
        if d.model.model_type not in GRAPH_FAMILIES:
            raise ConfigError(
                f"torchair graph mode supports llama and qwen2 models; {d.model_path} is "
                f"{d.model.model_type or 'of unknown type'}",
                key="graph.mode",
                value=mode,
                source=d.src("graph.mode"),
                fix="use --profile eager for this model",
            )
        tp = _int(d.vllm.get("tensor_parallel_size")) or 1
        if tp > 1:
            raise ConfigError(
                "torchair graph mode runs dense models on a single card",
                key="vllm.tensor_parallel_size",
                value=tp,
                source=d.src("vllm.tensor_parallel_size"),
                fix="set vllm.tensor_parallel_size=1, or use --profile eager for several cards",
            )
    if mode == "torchair" and d.vllm.get("enable_lora") is True:
        raise ConfigError(
            "graph mode does not support multi-LoRA",
            key="vllm.enable_lora",
            value=True,
            source=d.src("vllm.enable_lora"),
            fix="use --profile lora (eager) for adapters",
        )
    if d.model.is_moe and d.dialect.ascend and not is_graph:
        d.warnings.append(
            f"{d.model_path} is a MoE model ({d.model.model_type}); the guide recommends graph mode: "
            "--profile moe-graph"
        )
    if d.model.is_moe and mode == "torchair" and d.dialect.name == "ascend-vllm-0.6" and not d.host.mindspeed:
        d.missing(
            "MoE models need MindSpeed, and it is not importable in this Python",
            key="graph.mode",
            value=mode,
            fix="install MindSpeed in the image (git clone https://gitee.com/ascend/MindSpeed.git; "
            "git checkout a956b907ef3b0787d2a38577eb5b702f5b7e715d; pip install -e .)",
        )
    if d.model.size_name == "deepseek-v2-236b" and d.model.is_w8a8 and is_graph:
        if d.gears is not None and len(d.gears) > 4:
            raise ConfigError(
                "DeepSeek-V2-236B W8A8 supports at most 4 decode gears",
                key="graph.decode_gears",
                value=d.gears,
                source=d.src("graph.decode_gears"),
                fix="keep at most 4 gears, e.g. graph.decode_gears: [2, 4, 8, 16]",
            )
        current = d.env.get("VLLM_ENGINE_ITERATION_TIMEOUT_S")
        if current is None or (current.isdigit() and int(current) < 6000):
            d.env["VLLM_ENGINE_ITERATION_TIMEOUT_S"] = "6000"
            d.env_sources["VLLM_ENGINE_ITERATION_TIMEOUT_S"] = "rule"
            d.info.append("set VLLM_ENGINE_ITERATION_TIMEOUT_S=6000: DeepSeek-V2-236B W8A8 in graph mode")


def _gears(d: Draft) -> None:
    gears = d.gears or []
    bad = [g for g in gears if g < 2]
    if bad:
        raise ConfigError(
            "decode gears must not contain 1 (or anything below 2)",
            key="graph.decode_gears",
            value=gears,
            source=d.src("graph.decode_gears"),
            fix=f"remove {', '.join(map(str, bad))}: e.g. graph.decode_gears: [2, 4, 6, 8, 16, 32]",
        )
    top = d.max_num_seqs()
    kept = sorted(set(gears))
    dropped = [g for g in kept if g > top]
    if dropped:
        kept = [g for g in kept if g <= top]
        if top not in kept:
            kept.append(top)
        d.warnings.append(
            f"graph.decode_gears: dropped {', '.join(map(str, dropped))} (above max_num_seqs={top}) "
            f"and made {top} the top gear: {kept}"
        )
    d.gears = kept


def max_model_len(d: Draft) -> None:
    """max_model_len may not exceed config.json's max_position_embeddings or seq_length."""
    value = _int(d.vllm.get("max_model_len"))
    if value is None or d.model is None:
        return
    for name, limit in d.model.length_limits.items():
        if value > limit:
            raise ConfigError(
                f"longer than the model allows: config.json has {name} = {limit}",
                key="vllm.max_model_len",
                value=value,
                source=d.src("vllm.max_model_len"),
                fix=f"set vllm.max_model_len to at most {limit}",
            )


def high_precision(d: Draft) -> None:
    """Precision modes the guide requires on Ascend: prefix caching beyond 8192 tokens; Qwen2-7B/57B
    PFA; Qwen2-7B/57B/72B IFA at long sequences and prefix attention with prefix caching. Other models
    should not get them (5–10% slower)."""
    if not d.dialect.ascend:
        return
    length = _int(d.vllm.get("max_model_len")) or 0
    prefix = d.vllm.get("enable_prefix_caching") is True
    size = d.model.size_name if d.model is not None else None
    wanted: dict[str, str] = {}
    if prefix and length > LONG_SEQUENCE:
        wanted["USE_PREFIX_HIGH_PRECISION_MODE"] = f"prefix caching with max_model_len {length} > 8192"
    if size in ("qwen2-7b", "qwen2-57b"):
        wanted["USE_PFA_HIGH_PRECISION_MODE"] = f"{size} needs high-precision prefill attention"
    if size in ("qwen2-7b", "qwen2-57b", "qwen2-72b") and length > LONG_SEQUENCE:
        wanted["USE_IFA_HIGH_PRECISION_MODE"] = f"{size} at max_model_len {length} (long sequences)"
    if size in ("qwen2-7b", "qwen2-72b") and prefix:
        wanted.setdefault("USE_PREFIX_HIGH_PRECISION_MODE", f"{size} with prefix caching")
    for name, why in wanted.items():
        d.require_env(name, "1", why)
    if d.model is None:
        return
    for name in (
        "USE_PFA_HIGH_PRECISION_MODE",
        "USE_IFA_HIGH_PRECISION_MODE",
        "USE_PREFIX_HIGH_PRECISION_MODE",
    ):
        if name not in wanted and d.env.get(name) == "1":
            d.warnings.append(
                f"{name}=1 (from {d.env_sources.get(name, 'a profile')}) is meant for Qwen2-7B/57B/72B "
                "or long prefix caching; on this model it costs 5–10% latency"
            )


def lora(d: Draft) -> None:
    """LoRA: rank 8/16/32/64, at most 32 adapters, max_cpu_loras = max_loras, adapters are Hugging Face
    directories targeting qkv_proj, o_proj, gate_up_proj, down_proj."""
    modules = d.vllm.get("lora_modules")
    if not modules and d.vllm.get("enable_lora") is not True:
        return
    if modules and d.vllm.get("enable_lora") is not True:
        d.vllm["enable_lora"] = True
        d.info.append("set enable_lora: lora_modules are given")
    rank = _int(d.vllm.get("max_lora_rank"))
    if rank is not None and rank not in LORA_RANKS:
        raise ConfigError(
            "max_lora_rank must be 8, 16, 32 or 64",
            key="vllm.max_lora_rank",
            value=rank,
            source=d.src("vllm.max_lora_rank"),
            fix="set vllm.max_lora_rank to the smallest of 8, 16, 32, 64 that covers your adapters' rank",
        )
    loras = _int(d.vllm.get("max_loras"))
    if loras is not None and not 1 <= loras <= MAX_LORAS:
        raise ConfigError(
            f"max_loras must be between 1 and {MAX_LORAS}",
            key="vllm.max_loras",
            value=loras,
            source=d.src("vllm.max_loras"),
            fix=f"set vllm.max_loras to at most {MAX_LORAS}",
        )
    cpu = _int(d.vllm.get("max_cpu_loras"))
    if loras is not None and cpu is None:
        d.vllm["max_cpu_loras"] = loras
        d.info.append(f"set max_cpu_loras={loras}: it must equal max_loras")
    elif loras is not None and cpu != loras:
        raise ConfigError(
            f"max_cpu_loras must equal max_loras ({loras})",
            key="vllm.max_cpu_loras",
            value=cpu,
            source=d.src("vllm.max_cpu_loras"),
            fix=f"set vllm.max_cpu_loras={loras} or remove it (the launcher then sets it)",
        )
    for entry in modules or []:
        name, path = _lora_entry(entry, d)
        _check_adapter(d, name, path, rank or DEFAULT_MAX_LORA_RANK)


def _lora_entry(entry: str, d: Draft) -> tuple[str, str]:
    text = entry.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            return str(obj["name"]), str(obj["path"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ConfigError(
            "each LoRA module is name=path",
            key="vllm.lora_modules",
            value=entry,
            source=d.src("vllm.lora_modules"),
            fix="write it as lora1=/models/adapters/lora1",
        )
    return name, path


def _check_adapter(d: Draft, name: str, path: str, max_rank: int) -> None:
    key = "vllm.lora_modules"
    try:
        config = read_json(Path(path) / "adapter_config.json")
    except ModelDirError as exc:
        d.missing(
            f"LoRA adapter {name}: {exc.what} in {path}",
            key=key,
            value=f"{name}={path}",
            fix="point it at a Hugging Face (PEFT) adapter directory with adapter_config.json",
        )
        return
    rank = config.get("r")
    if isinstance(rank, int) and rank > max_rank:
        raise ConfigError(
            f"adapter {name} has rank {rank}, above max_lora_rank {max_rank}",
            key=key,
            value=f"{name}={path}",
            source=d.src(key),
            fix=f"set vllm.max_lora_rank to {min((r for r in LORA_RANKS if r >= rank), default=64)}",
        )
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    unsupported = sorted(str(t) for t in targets if str(t).rsplit(".", 1)[-1] not in LORA_TARGETS)
    if unsupported:
        raise ConfigError(
            f"adapter {name} targets {', '.join(unsupported)}; Ascend LoRA supports qkv_proj, o_proj, "
            "gate_up_proj, down_proj",
            key=key,
            value=f"{name}={path}",
            source=d.src(key),
            fix="retrain or export the adapter for the attention and MLP projections only",
        )


def speculative(d: Draft) -> None:
    """Speculative decoding: a Hugging Face draft of the same family, draft tensor parallel 1, a token
    count; eagle on the 0.6 dialect needs a converted draft checkpoint."""
    spec = d.spec
    if spec is None:
        return
    method = spec.get("method") or "draft"
    if method != "ngram" and not spec.get("model"):
        raise ConfigError(
            "speculative decoding needs a draft model",
            key="speculative.model",
            value=None,
            source=d.src("speculative"),
            fix="--set speculative.model=/models/draft (a Hugging Face directory of the same family)",
        )
    if spec.get("num_tokens") is None:
        raise ConfigError(
            "speculative decoding needs the number of draft tokens per step",
            key="speculative.num_tokens",
            value=None,
            source=d.src("speculative"),
            fix="--set speculative.num_tokens=4",
        )
    tp = spec.get("draft_tensor_parallel_size")
    if tp is None:
        spec["draft_tensor_parallel_size"] = 1
    elif tp != 1:
        raise ConfigError(
            "the draft model must run on one card (communication would cost more than it saves)",
            key="speculative.draft_tensor_parallel_size",
            value=tp,
            source=d.src("speculative.draft_tensor_parallel_size"),
            fix="set it to 1",
        )
    if method == "ngram":
        return
    path = str(spec["model"])
    try:
        draft = read_json(Path(path) / "config.json")
    except ModelDirError as exc:
        d.missing(
            f"draft model: {exc.what}",
            key="speculative.model",
            value=path,
            fix="point it at a Hugging Face model directory (config.json and weights)",
        )
        return
    draft_type = str(draft.get("model_type", "")).lower()
    architectures = " ".join(str(a) for a in draft.get("architectures") or []).lower()
    is_eagle_ckpt = draft_type == "eagle" or "eagle" in architectures
    if method == "eagle":
        if d.dialect.name == "ascend-vllm-0.6" and not is_eagle_ckpt:
            raise ConfigError(
                "vLLM 0.6.3 loads EAGLE drafts only after conversion (its config.json has no model_type 'eagle')",
                key="speculative.model",
                value=path,
                source=d.src("speculative.model"),
                fix="run lm_tools/spec_decode/EAGLE/convert_eagle_ckpt_to_vllm_compatible.py --base-path "
                "<model> --draft-path <draft> ... and point speculative.model at its output",
            )
        return
    if d.model is not None and draft_type and d.model.model_type and draft_type != d.model.model_type:
        raise ConfigError(
            f"the draft model is {draft_type}, the served model is {d.model.model_type}: they must be of "
            "the same family",
            key="speculative.model",
            value=path,
            source=d.src("speculative.model"),
            fix="use a smaller model of the same family as the draft",
        )


def quantization_and_dtype(d: Draft) -> None:
    """On Ascend: quantization awq or smoothquant (vllm-ascend adds its own `ascend`); dtype auto,
    float16 or bfloat16."""
    if not d.dialect.ascend:
        return
    allowed = QUANTIZATION_06 if d.dialect.name == "ascend-vllm-0.6" else QUANTIZATION_ASCEND
    quant = d.vllm.get("quantization")
    if quant is not None and quant not in allowed:
        raise ConfigError(
            f"{d.dialect.name} supports quantization {', '.join(allowed)}",
            key="vllm.quantization",
            value=quant,
            source=d.src("vllm.quantization"),
            fix=f"use one of {', '.join(allowed)}, or remove it for unquantized weights",
        )
    dtype = d.vllm.get("dtype")
    if dtype is not None and dtype not in ASCEND_DTYPES:
        raise ConfigError(
            "Ascend serves FP16 and BF16",
            key="vllm.dtype",
            value=dtype,
            source=d.src("vllm.dtype"),
            fix="use auto (the checkpoint's own dtype, recommended), float16 or bfloat16",
        )


def parallel(d: Draft) -> None:
    """tensor x pipeline parallelism fits the selected NPUs (with ray, other nodes may bring more: a
    warning); the executor backend is mp or ray."""
    backend = d.vllm.get("distributed_executor_backend")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(
            "the distributed executor backend is mp or ray",
            key="vllm.distributed_executor_backend",
            value=backend,
            source=d.src("vllm.distributed_executor_backend"),
            fix="use mp (Python processes, the default) or ray",
        )
    tp = _int(d.vllm.get("tensor_parallel_size"))
    if tp is not None and tp < 1:
        raise ConfigError(
            "tensor_parallel_size must be at least 1",
            key="vllm.tensor_parallel_size",
            value=tp,
            source=d.src("vllm.tensor_parallel_size"),
            fix="set it to the number of NPUs the model is split across",
        )
    sel = d.selection
    if not d.dialect.ascend or sel is None or not sel.indices or tp is None:
        return
    pp = _int(d.vllm.get("pipeline_parallel_size")) or 1
    count = len(sel.indices) * d.nodes
    if tp * pp <= count:
        return
    what = (
        f"more parallelism than NPUs: tensor {tp}"
        + (f" x pipeline {pp}" if pp > 1 else "")
        + f" > {count} (ASCEND_RT_VISIBLE_DEVICES={sel.text}, {sel.source}"
        + (f", on each of {d.nodes} nodes)" if d.nodes > 1 else ")")
    )
    if backend == "ray":
        d.warnings.append(f"{what}; the ray backend needs a Ray cluster whose other nodes bring the rest")
        return
    raise ConfigError(
        what,
        key="vllm.tensor_parallel_size",
        value=tp,
        source=d.src("vllm.tensor_parallel_size"),
        fix=f"set vllm.tensor_parallel_size to at most {count // pp} (or tensor_parallel_size: auto), "
        "or request more NPUs for the pod",
    )


def multimodal(d: Draft) -> None:
    """llava: PYTORCH_NPU_ALLOC_CONF is expandable_segments:True (False on virtual-memory errors);
    --chat-template, when given, must exist."""
    conf, where = d.effective_env("PYTORCH_NPU_ALLOC_CONF")
    if conf is not None and conf not in ("expandable_segments:True", "expandable_segments:False"):
        raise ConfigError(
            "the guide uses expandable_segments:True, or expandable_segments:False after virtual-memory errors",
            key="env.PYTORCH_NPU_ALLOC_CONF",
            value=conf,
            source=where,
            fix="set PYTORCH_NPU_ALLOC_CONF=expandable_segments:True",
        )
    template = d.vllm.get("chat_template")
    # A template is a file path or inline Jinja text; only a path can be missing.
    is_path = isinstance(template, str) and ("/" in template or template.endswith(".jinja")) and "{" not in template
    if is_path and not Path(str(template)).is_file():
        d.missing(
            "the chat template file does not exist",
            key="vllm.chat_template",
            value=template,
            fix="mount the template (e.g. examples/template_llava.jinja) or remove chat_template",
        )
    if "VLLM_IMAGE_FETCH_TIMEOUT" in d.env and d.model is not None and not d.model.is_llava:
        d.warnings.append(
            f"the multimodal profile is meant for llava models; {d.model_path} is "
            f"{d.model.model_type or 'of unknown type'}"
        )


def runtime(d: Draft) -> None:
    """Check and run only (render looks at no host): CANN's environment was found and sourced, the
    env_files exist, and NPUs are visible. Exit 3 with what was looked for."""
    cann = d.host.cann
    if not d.strict or not cann.checked:
        return
    if cann.missing_env_files:
        raise PreflightError(
            f"env file {', '.join(cann.missing_env_files)} does not exist",
            key="env_files",
            value=d.env_files,
            source=d.src("env_files"),
            fix="mount it, or remove it from env_files (the standard CANN scripts are found without it)",
        )
    if cann.error:
        raise PreflightError(
            f"sourcing the environment failed: {cann.error}",
            key="env_files" if d.env_files else "cann",
            source=d.src("env_files") if d.env_files else None,
            fix="run the same `source` in a shell in the container to see why; it must not exit or wait for input",
        )
    if cann.sourced:
        d.info.append(f"sourced {', '.join(cann.sourced)}: {len(cann.changes)} variables set or changed")
    if not d.dialect.ascend:
        return
    if cann.toolkit is None:
        raise PreflightError(
            f"the CANN toolkit was not found: looked for {', '.join(cann.looked_for)}, and neither "
            "ASCEND_TOOLKIT_HOME nor ASCEND_HOME_PATH is set (without it vLLM fails with "
            "`libhccl.so: cannot open shared object file`)",
            key="cann.toolkit_home",
            source=d.src("cann.toolkit_home"),
            fix=TOOLKIT_FIX,
        )
    if cann.nnal is None and "nnal" not in cann.already and d.dialect.name != "ascend-vllm-0.6":
        d.warnings.append(
            "NNAL (the ATB library vllm-ascend uses) was not found under /usr/local/Ascend/nnal; "
            "set cann.nnal_home if it is elsewhere"
        )
    if d.selection is not None and d.selection.indices is None:
        raise PreflightError(
            "no NPU is visible: ASCEND_VISIBLE_DEVICES and ASCEND_RT_VISIBLE_DEVICES are unset and there "
            "is no /dev/davinciN",
            key="devices",
            value=d.devices,
            source=d.src("devices"),
            fix=f"{NO_NPU_FIX}, or use --dialect vllm-cpu to run without NPUs",
        )


ALL: tuple[Callable[[Draft], None], ...] = (
    npu_devices,
    entrypoint,
    block_size,
    multi_step,
    graph,
    max_model_len,
    high_precision,
    lora,
    speculative,
    quantization_and_dtype,
    parallel,
    multimodal,
    runtime,
)


def apply(d: Draft) -> None:
    for rule in ALL:
        rule(d)
