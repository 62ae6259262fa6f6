"""Shared test helpers: a clean environment, the CLI run in-process, fixture paths."""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ascend import Node, Processes
from tests.support import REPO

PR_SET_CHILD_SUBREAPER = 36

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
    # CANN's variables and the NPU runtime's: a test machine with CANN must not change the plans.
    "ASCEND_TOOLKIT_HOME",
    "ASCEND_HOME_PATH",
    "ATB_HOME_PATH",
    "LAUNCHER_INSTANCE",
    "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES",
    "FAKE_NPU_SMI",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for name in list(os.environ):
        if name.startswith("LAUNCH_") or name in _PLAN_VARIABLES or name.startswith("PTA_TORCHAIR"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)
    from launcher import host, npu

    # No /dev/davinciN unless a test makes some; "said once" starts afresh in each test.
    monkeypatch.setattr(host, "DEV_DIR", tmp_path_factory.mktemp("dev"))
    monkeypatch.setattr(npu, "_said", set())


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
        before = {key: os.environ.get(key) for key in env or {}}
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        code = cli.main(list(args))
        captured = capsys.readouterr()
        for key, value in before.items():  # as it was before this call (PATH must survive)
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """A fake Ascend node (CANN scripts, npu-smi replaying recorded output); see tests/ascend.py."""
    return Node(tmp_path / "node")


@pytest.fixture
def processes() -> Iterator[Processes]:
    spawned = Processes()
    yield spawned
    spawned.cleanup()


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make this test process adopt orphans, as the launcher does as PID 1 (or a subreaper)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) is not available")
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
