"""Shared test helpers: a clean environment, the CLI run in-process, fixture paths."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import REPO

# Variables that change plans; the tests start without them whatever the machine has.
_PLAN_VARIABLES = (
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_VISIBLE_DEVICES",
    "INFER_MODE",
    "PYTORCH_NPU_ALLOC_CONF",
    "USE_PFA_HIGH_PRECISION_MODE",
    "USE_IFA_HIGH_PRECISION_MODE",
    "USE_PREFIX_HIGH_PRECISION_MODE",
    "VLLM_ENGINE_ITERATION_TIMEOUT_S",
    "VLLM_IMAGE_FETCH_TIMEOUT",
    "VLLM_CPU_KVCACHE_SPACE",
    "HCCL_OP_EXPANSION_MODE",
    "EAGLE_USE_SAFE_AI_LAB_STYLE",
    "ENABLE_SPEC_METRIC",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LAUNCH_") or name in _PLAN_VARIABLES or name.startswith("PTA_TORCHAIR"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def launch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `launch ARGS...` in this process, as a user would type it; returns code, stdout, stderr."""
    from launcher import cli

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        code = cli.main(list(args))
        captured = capsys.readouterr()
        for key in env or {}:
            monkeypatch.delenv(key, raising=False)
        return Result(code, captured.out, captured.err)

    return run
