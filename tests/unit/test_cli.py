"""The command line as a user meets it: bad input gives exit 2 or 3 and a message, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, model

LLAMA = model("llama-tiny")


def test_profiles_lists_every_builtin_with_its_description(launch: Any) -> None:
    result = launch("profiles")
    assert result.code == 0
    names = [line.split()[0] for line in result.out.splitlines()]
    assert names == sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))
    assert any(line.startswith("graph") and "torchair" in line for line in result.out.splitlines())


def test_profiles_show_resolves_extends(launch: Any) -> None:
    import yaml

    result = launch("profiles", "show", "moe-graph")
    assert result.code == 0, result.err
    shown = yaml.safe_load(result.out)
    assert shown["composed_of"] == ["base", "graph", "moe-graph"]
    assert shown["vllm"]["block_size"] == 128 and "num_scheduler_steps" not in shown["vllm"]
    assert shown["graph"]["decode_gears"] == [2, 4, 6, 8, 16, 32]
    assert shown["dialects"] == sorted(["ascend-vllm-0.6", "vllm-ascend-torchair", "vllm-ascend"])


def test_profiles_show_unknown_name(launch: Any) -> None:
    result = launch("profiles", "show", "grahp")
    assert result.code == 2
    assert "did you mean 'graph'" in result.err and "known profiles:" in result.err


def test_unknown_profile_lists_the_known_ones(launch: Any) -> None:
    result = launch("render", "-p", "turbo", "--model", LLAMA, "--dialect", "vllm-cpu")
    assert result.code == 2
    assert "--profile = 'turbo'" in result.err and "base, cpu-dev, eager" in result.err


def test_malformed_yaml_names_file_line_and_column(launch: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("vllm:\n  max_num_seqs: 8\n   block_size: [128\n")
    result = launch("render", "-p", str(bad), "--model", LLAMA, "--dialect", "vllm-cpu")
    assert result.code == 2
    assert f"{bad}:3:" in result.err and "malformed YAML" in result.err


@pytest.mark.parametrize(
    ("document", "fragments"),
    [
        ("- a\n- b\n", ["must be a mapping of settings, not a list"]),
        ("vlm:\n  block_size: 64\n", ["vlm", "did you mean 'vllm'"]),
        ("vllm: 5\n", ["`vllm:` must be a mapping"]),
        ("extends: 5\n", ["`extends` must be a profile name"]),
        ("supervisor:\n  restart: sometimes\n", ["supervisor.restart = 'sometimes'", "never", "on-failure"]),
        ("supervisor:\n  stop_timeout: soon\n", ["supervisor.stop_timeout = 'soon'", "duration"]),
        ("supervisor:\n  restrat: never\n", ["supervisor.restrat", "unknown setting in supervisor"]),
        ("graph:\n  mode: turbo\n", ["graph.mode = 'turbo'", "eager"]),
        ("extends: [me]\n", ["cycle", "me -> me"]),
    ],
)
def test_bad_profile_documents(launch: Any, tmp_path: Path, document: str, fragments: list[str]) -> None:
    path = tmp_path / "me.yaml"
    path.write_text(document)
    result = launch("render", "-p", str(path), "--model", LLAMA, "--dialect", "vllm-cpu")
    assert result.code == 2, result.out
    for fragment in fragments:
        assert fragment in result.err
    assert "Traceback" not in result.err


def test_set_without_equals(launch: Any) -> None:
    result = launch("render", "--model", LLAMA, "--dialect", "vllm-cpu", "--set", "vllm.max_model_len")
    assert result.code == 2
    assert "--set needs KEY=VALUE" in result.err and "vllm.max_model_len=8192" in result.err


def test_wrongly_typed_env_value_names_the_variable(launch: Any) -> None:
    result = launch("render", "--model", LLAMA, "--dialect", "vllm-cpu", env={"LAUNCH_VLLM__MAX_MODEL_LEN": "abc"})
    assert result.code == 2
    assert "vllm.max_model_len = 'abc' (from LAUNCH_VLLM__MAX_MODEL_LEN): expected a whole number" in result.err
    assert "fix:" in result.err


def test_status_port_out_of_range(launch: Any) -> None:
    result = launch("render", "--model", LLAMA, "--dialect", "vllm-cpu", env={"LAUNCH_STATUS_PORT": "70000"})
    assert result.code == 2 and "status_port = '70000' (from LAUNCH_STATUS_PORT)" in result.err


def test_no_model(launch: Any) -> None:
    result = launch("render", "--dialect", "vllm-cpu")
    assert result.code == 2 and "no model given" in result.err and "LAUNCH_MODEL" in result.err


def test_missing_model_dir_is_exit_3_for_check_and_a_warning_for_render(launch: Any) -> None:
    result = launch("check", "--model", "/models/absent", "--dialect", "vllm-cpu", "--set", "vllm.port=0")
    assert result.code == 3
    assert "model = '/models/absent' (from --model): the model directory does not exist" in result.err
    rendered = launch("render", "--model", "/models/absent", "--dialect", "vllm-cpu")
    assert rendered.code == 0
    assert any("does not exist" in w for w in rendered.json()["warnings"])


def test_model_dir_without_config_json(launch: Any) -> None:
    result = launch("check", "--model", model("no-config"), "--dialect", "vllm-cpu", "--set", "vllm.port=0")
    assert result.code == 3 and "config.json not found" in result.err


def test_check_passes_and_starts_nothing(launch: Any) -> None:
    result = launch("check", "-p", "cpu-dev", "--model", LLAMA, "--dialect", "vllm-cpu", "--set", "vllm.port=0")
    assert result.code == 0, result.err
    assert result.out.startswith("ok: base, cpu-dev on vllm-cpu")


def test_check_reports_a_busy_port(launch: Any) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = launch(
            "check",
            "--model",
            LLAMA,
            "--dialect",
            "vllm-cpu",
            "--set",
            "vllm.host=127.0.0.1",
            "--set",
            f"vllm.port={port}",
        )
    assert result.code == 3
    assert f"127.0.0.1:{port}" in result.err and "already in use" in result.err


def test_conflicting_options(launch: Any) -> None:
    # Asking for torchair graph mode and enforce_eager together cannot work.
    result = launch(
        "render",
        "-p",
        "eager",
        "--model",
        LLAMA,
        "--dialect",
        "ascend-vllm-0.6",
        "--set",
        "graph.mode=torchair",
        "--set",
        "vllm.enforce_eager=true",
    )
    assert result.code == 2 and "--enforce-eager" in result.err


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=60,
    )


def test_real_process_exit_codes_and_no_traceback() -> None:
    ok = run_cli("render", "--model", LLAMA, "--dialect", "vllm-cpu")
    assert ok.returncode == 0 and json.loads(ok.stdout)["dialect"] == "vllm-cpu"
    bad = run_cli("render", "--model", LLAMA, "--dialect", "vllm-cpu", env={"LAUNCH_VLLM__MAX_MODEL_LEN": "abc"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    env_fail = run_cli("check", "--model", "/absent", "--dialect", "vllm-cpu")
    assert env_fail.returncode == 3 and "Traceback" not in env_fail.stderr


def test_render_imports_neither_vllm_torch_nor_aiohttp() -> None:
    code = (
        "import sys; from launcher import cli; rc = cli.main(['render', '-p', 'graph', '--model', "
        f"{LLAMA!r}, '--dialect', 'ascend-vllm-0.6']);"
        "heavy = sorted(m for m in ('vllm', 'torch', 'torch_npu', 'aiohttp', 'transformers', 'prometheus_client') "
        "if m in sys.modules); print(heavy, file=sys.stderr); sys.exit(rc or (1 if heavy else 0))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("[]")


def test_run_logs_errors_as_json_for_the_cluster() -> None:
    proc = run_cli("run", "--model", "/absent", "--dialect", "vllm-cpu")
    assert proc.returncode == 3
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    assert event["level"] == "error" and event["event"] == "preflight_failed"
    assert event["key"] == "model" and event["value"] == "/absent" and "fix" in event


def test_check_refuses_a_tmpdir_too_long_for_vllms_sockets(launch: Any, tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 80)
    long_dir.mkdir()
    result = launch("check", "--model", LLAMA, "--dialect", "vllm-cpu", "--set", "vllm.port=0",
                    env={"TMPDIR": str(long_dir)})  # fmt: skip
    assert result.code == 3
    assert "TMPDIR" in result.err and "107" in result.err and "at most 70" in result.err
    assert launch("check", "--model", LLAMA, "--dialect", "vllm-cpu", "--set", "vllm.port=0",
                  env={"TMPDIR": "/tmp"}).code == 0  # fmt: skip
