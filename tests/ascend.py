"""A fake Ascend node for the tests: CANN's set_env.sh scripts in a temporary /usr/local/Ascend, the
fake npu-smi (tests/fakes/bin/npu-smi) on PATH replaying recorded output, and the device plugin's
variable. Everything the launcher does with them is real: bash sources the scripts, npu-smi runs as a
process, leftover processes are real processes."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from tests.support import REPO

SMI_FIXTURES = REPO / "tests" / "fixtures" / "npu-smi"
FAKE_BIN = REPO / "tests" / "fakes" / "bin"


def recorded(name: str) -> str:
    """A fixture as npu-smi printed it: without the "# " lines that cite its source."""
    return "".join(line for line in (SMI_FIXTURES / name).read_text().splitlines(True) if not line.startswith("# "))


TOOLKIT_SET_ENV = """\
# A small stand-in for CANN's ascend-toolkit/set_env.sh: the variables the real one exports.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export ASCEND_TOOLKIT_HOME=$here/latest
export ASCEND_HOME_PATH=$here/latest
export LD_LIBRARY_PATH=$here/latest/lib64:$here/latest/lib64/plugin/opskernel:${LD_LIBRARY_PATH:-}
export PATH=$here/latest/bin:$PATH
export ASCEND_OPP_PATH=$here/latest/opp
echo "set_env.sh talks on stdout; the launcher must not mind"
"""
NNAL_SET_ENV = """\
# A small stand-in for CANN's nnal/atb/set_env.sh.
export ATB_HOME_PATH=/usr/local/Ascend/nnal/atb/latest/atb/cxx_abi_1
export LD_LIBRARY_PATH=$ATB_HOME_PATH/lib:${LD_LIBRARY_PATH:-}
"""


class Node:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ascend = root / "Ascend"
        self.toolkit = self.ascend / "ascend-toolkit"
        self.nnal = self.ascend / "nnal"
        self.smi = root / "npu-smi-state"
        self.home = root / "home"
        for path in (self.smi, self.home):
            path.mkdir(parents=True, exist_ok=True)
        self.visible = "0,1"

    # --- CANN ------------------------------------------------------------------------------------

    def install_cann(self, version: str = "8.0.0", *, nnal: bool = True) -> Node:
        info = self.toolkit / "latest" / f"{platform.machine()}-linux" / "ascend_toolkit_install.info"
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(f"package_name=Ascend-cann-toolkit\nversion={version}\narch={platform.machine()}\n")
        (self.toolkit / "set_env.sh").write_text(TOOLKIT_SET_ENV)
        if nnal:
            (self.nnal / "atb").mkdir(parents=True, exist_ok=True)
            (self.nnal / "atb" / "set_env.sh").write_text(NNAL_SET_ENV)
        return self

    # --- npu-smi ---------------------------------------------------------------------------------

    def npu_smi(self, fixture: str, *, replace: dict[str, str] | None = None) -> Node:
        """`npu-smi info` prints a recorded fixture (optionally edited, e.g. a device's health)."""
        text = (SMI_FIXTURES / fixture).read_text()
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        (self.smi / "info").write_text(text)
        return self

    def view(self, name: str, fixture: str, *, replace: dict[str, str] | None = None) -> Node:
        text = (SMI_FIXTURES / fixture).read_text()
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        (self.smi / name).write_text(text)
        return self

    def processes(self, *rows: str, container_pid: bool = False) -> Node:
        """Rows "NPU CHIP PID NAME MB [sticky]" for the process table (listed while PID lives)."""
        (self.smi / "procs").write_text("".join(f"{r}\n" for r in rows))
        if container_pid:
            (self.smi / "container-pid").write_text("")
        return self

    def hang(self, seconds: float) -> Node:
        (self.smi / "sleep").write_text(f"{seconds}")
        return self

    def fail(self, fixture: str, rc: int = 255) -> Node:
        shutil.copy(SMI_FIXTURES / fixture, self.smi / "fail")
        (self.smi / "rc").write_text(str(rc))
        return self

    def calls(self) -> list[str]:
        path = self.smi / "calls"
        return path.read_text().splitlines() if path.exists() else []

    # --- the environment the launcher runs in ----------------------------------------------------

    def env(self, *, smi: bool = True, cann: bool = True) -> dict[str, str]:
        path = os.environ.get("PATH", os.defpath)
        env = {
            "PATH": f"{FAKE_BIN}:{path}" if smi else path,
            "FAKE_NPU_SMI": str(self.smi),
            "HOME": str(self.home),
            "ASCEND_VISIBLE_DEVICES": self.visible,
        }
        if cann:
            env["LAUNCH_CANN__TOOLKIT_HOME"] = str(self.toolkit)
            env["LAUNCH_CANN__NNAL_HOME"] = str(self.nnal)
        return env


class Processes:
    """Processes standing in for vLLM engines (`sleep` with LAUNCHER_INSTANCE in its environment);
    all of them, and the shells that started them, are killed and reaped at the end of the test."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.shells: list[subprocess.Popen[str]] = []

    def spawn(self, marker: str | None, *, orphan: bool, parent_marker: bool = False) -> int:
        """orphan: its parent (sh) exits at once, so the nearest subreaper adopts it (the test process,
        see the `subreaper` fixture), as an engine core is adopted when its API server died. Otherwise
        its parent sh stays alive (a shell that started it), carrying the marker if parent_marker."""
        env = {k: v for k, v in os.environ.items() if k != "LAUNCHER_INSTANCE"}
        prefix = f"LAUNCHER_INSTANCE={marker} " if marker else ""
        if orphan:
            out = subprocess.run(
                ["sh", "-c", f"env {prefix}sleep 300 >/dev/null 2>&1 & echo $!"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            pid = int(out.stdout)
        else:
            if parent_marker and marker:
                env["LAUNCHER_INSTANCE"] = marker
            shell = subprocess.Popen(
                ["sh", "-c", f"env {prefix}sleep 300 & echo $!; wait"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.shells.append(shell)
            assert shell.stdout is not None
            pid = int(shell.stdout.readline())
        self.pids.append(pid)
        _wait_for_exec(pid)
        return pid

    def cleanup(self) -> None:
        import psutil

        procs = []
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                proc.kill()
                procs.append(proc)
            except psutil.Error:
                continue
        psutil.wait_procs(procs, timeout=5)
        for shell in self.shells:
            shell.kill()
            shell.wait(timeout=5)
            if shell.stdout is not None:
                shell.stdout.close()


def _wait_for_exec(pid: int, deadline: float = 10.0) -> None:
    """`env` replaces itself with `sleep`: until then its environment lacks the marker."""
    import time

    import psutil

    until = time.monotonic() + deadline
    while time.monotonic() < until:
        try:
            if psutil.Process(pid).cmdline()[:1] == ["sleep"]:
                return
        except psutil.Error:
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not start sleep within {deadline}s")


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
