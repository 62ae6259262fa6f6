"""`launch demo` without starting anything: its environment, its hint, and the message when the `cpu`
extra is missing. (The real demo runs in tests/e2e/test_demo.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher import demo


def test_environment_keeps_vllm_inside_the_demo_dir_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TMPDIR", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    env = demo.demo_environment(Path("/d"))
    assert env == {
        "TMPDIR": "/d/tmp",
        "VLLM_CACHE_ROOT": "/d/vllm-cache",
        "TORCHINDUCTOR_CACHE_DIR": "/d/inductor-cache",
        "HF_HOME": "/d/hf-home",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }


def test_a_long_demo_dir_gets_a_short_tmpdir_for_vllms_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    root = Path("/" + "d" * 80)
    tmpdir = demo.demo_environment(root)["TMPDIR"]
    assert len(tmpdir) + len("/0123abcd-0123-4567-89ab-0123456789ab") <= 107
    assert tmpdir.startswith("/tmp/launch-demo-")
    assert demo.demo_environment(Path("/short"))["TMPDIR"] == "/short/tmp"


def test_values_already_set_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    monkeypatch.setenv("HF_HOME", "/mine")
    env = demo.demo_environment(Path("/d"))
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert "HF_HOME" not in env


@pytest.mark.parametrize(
    ("argv", "variable", "port"),
    [
        ([], None, 8080),
        (["--set", "vllm.port=9000"], None, 9000),
        (["--set=vllm.port=9001"], None, 9001),
        ([], "9100", 9100),
        (["--set", "vllm.port=9000"], "9100", 9000),  # the command line beats the environment
        (["--", "--set", "vllm.port=1"], None, 8080),  # after `--` it is vLLM's, not ours
    ],
)
def test_hint_names_the_port_the_run_will_use(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], variable: str | None, port: int
) -> None:
    if variable is None:
        monkeypatch.delenv("LAUNCH_VLLM__PORT", raising=False)
    else:
        monkeypatch.setenv("LAUNCH_VLLM__PORT", variable)
    assert demo._port_from(argv) == port
    assert f"http://127.0.0.1:{port}/v1/completions" in demo.hint(port, Path("/m"))


def test_without_the_cpu_extra_it_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['transformers'] = None\n"
        "sys.modules['torch'] = None\n"
        "from launcher import demo\n"
        "sys.exit(demo.main([]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "LAUNCH_DEMO_DIR": str(tmp_path), "PYTHONPATH": str(Path.cwd())}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "pip install 'launch[cpu]'" in result.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
