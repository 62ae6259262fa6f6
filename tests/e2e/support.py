"""Helpers shared by the end-to-end tests and `bench/`: ports, HTTP polls with deadlines, process trees.

Everything here waits by polling a condition until a deadline, never by sleeping a fixed time, and
everything that starts a process can find and kill all of it again, vLLM's engine core included.

Finding vLLM's processes: the engine core and its worker rename themselves with setproctitle
(`VLLM::EngineCore`, `VLLM::Worker`), which also clobbers what /proc/PID/environ shows, so an
environment-variable marker cannot find them. What they do keep is their working directory; the tests
start everything in a per-test directory and look for strays by cwd, besides the descendants recorded
while the tree was intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

ENGINE_CORE_TITLE = "VLLM::EngineCore"
VLLM_TITLE_PREFIX = "VLLM::"


def free_port() -> int:
    """A TCP port that was free a moment ago (the kernel picks it; nothing is held open)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# vLLM binds ZMQ IPC sockets at $TMPDIR/<uuid4>, and a unix socket path holds at most 107 bytes: a
# longer TMPDIR (pytest's tmp_path easily is) fails 8 s into the start with "ipc path ... is longer
# than 107 characters". 107 - len("/") - 36 (uuid) = 70.
MAX_TMPDIR_LEN = 70


@contextlib.contextmanager
def run_dirs(base: Path, *, kv_cache_gib: str = "1") -> Iterator[dict[str, str]]:
    """The variables that keep a vLLM run's writes inside `base` and off the network.

    vLLM (and torch, and huggingface_hub) write outside the working directory: /tmp files, a compile
    cache, a hub cache. Each run gets its own so tests do not share state or leave litter behind.
    TMPDIR is `base`/tmp when its path is short enough for vLLM's sockets, else a short directory
    under /tmp that is removed on exit.
    """
    dirs = {
        "VLLM_CACHE_ROOT": base / "vllm-cache",
        "TORCHINDUCTOR_CACHE_DIR": base / "inductor-cache",
        "HF_HOME": base / "hf-home",
    }
    short: Path | None = None
    tmp = base / "tmp"
    if len(str(tmp.resolve())) > MAX_TMPDIR_LEN:
        tmp = short = Path(tempfile.mkdtemp(prefix="vllm-tmp-", dir="/tmp"))
    dirs["TMPDIR"] = tmp
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env = {name: str(path) for name, path in dirs.items()}
    env["HF_HUB_OFFLINE"] = "1"
    env["VLLM_CPU_KVCACHE_SPACE"] = kv_cache_gib  # GiB; vLLM's default would take a large share of RAM
    try:
        yield env
    finally:
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


# --- HTTP -----------------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered (refused, reset, timed out)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read() or b"")
    except (OSError, ValueError):
        return 0, b""


def post_json(url: str, payload: Mapping[str, Any], timeout: float = 60.0) -> tuple[int, Any]:
    """(status, decoded JSON body or the raw text); status 0 when nothing answered."""
    data = json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        status, body = int(err.code), err.read() or b""
    except OSError:
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.end = self.started + seconds

    @property
    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def poll(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.25,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """True as soon as `condition()` holds; False at the deadline or once `alive()` says the process
    that should make it true has gone (no point waiting for a dead server)."""
    deadline = Deadline(timeout)
    while True:
        if condition():
            return True
        if deadline.expired() or (alive is not None and not alive()):
            return condition()
        time.sleep(min(interval, deadline.left))


def wait_http_ok(url: str, *, timeout: float, alive: Callable[[], bool] | None = None, interval: float = 0.25) -> bool:
    return poll(lambda: http_get(url, timeout=2.0)[0] == 200, timeout=timeout, interval=interval, alive=alive)


# --- processes -------------------------------------------------------------------------------------


class Server:
    """A started command with its log file, for tests that must never leave it running.

    The command gets its own session (process group), so one killpg reaches everything that did not
    move itself elsewhere; `kill_all` also kills every descendant seen and any stray whose working
    directory is `cwd` (see the module docstring).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in kill_all, the object's lifetime
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.seen: dict[int, psutil.Process] = {}
        self.remember()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def remember(self) -> list[psutil.Process]:
        """Record the current descendants (kept even after they are reparented or gone)."""
        found = descendants(self.pid)
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def engine_core(self) -> psutil.Process | None:
        self.remember()
        return find_engine_core(self.pid)

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this run still alive: recorded descendants and strays in its cwd."""
        self.remember()
        return alive_of([*self.seen.values(), *processes_in_dir(self.cwd)])

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_all(self) -> None:
        """SIGKILL the whole tree, wherever its parts went, and reap the direct child."""
        self.remember()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        kill_processes([*self.seen.values(), *processes_in_dir(self.cwd)])
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.wait(30)
        self._log.close()


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def is_engine_core(proc: psutil.Process) -> bool:
    try:
        cmdline = proc.cmdline()
        return proc.name().startswith(ENGINE_CORE_TITLE) or bool(cmdline and cmdline[0].startswith(ENGINE_CORE_TITLE))
    except psutil.Error:
        return False


def find_engine_core(root_pid: int) -> psutil.Process | None:
    """The `VLLM::EngineCore` process below `root_pid` (the API server's child), if there is one."""
    for proc in descendants(root_pid):
        if is_engine_core(proc):
            return proc
    return None


def processes_in_dir(directory: Path) -> list[psutil.Process]:
    """Processes (not this one, nor its ancestors) whose working directory is `directory` or below."""
    target = str(directory.resolve())
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        try:
            cwd = proc.cwd()
        except psutil.Error:
            continue
        if cwd == target or cwd.startswith(target + os.sep):
            found.append(proc)
    return found


def alive_of(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running (is_running also checks the pid was not reused) and not zombies."""
    out: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out[proc.pid] = proc
        except psutil.Error:
            continue
    return list(out.values())


def kill_processes(procs: Iterable[psutil.Process], timeout: float = 10.0) -> None:
    victims = alive_of(procs)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(victims, timeout=timeout)


def describe(procs: Iterable[psutil.Process]) -> str:
    parts = []
    for proc in procs:
        try:
            parts.append(f"{proc.pid} {proc.name()!r} {' '.join(proc.cmdline()).strip()[:120]!r}")
        except psutil.Error:
            parts.append(f"{proc.pid} (gone)")
    return "; ".join(parts) or "none"


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def vllm_server_argv(model: Path, port: int, *extra: str) -> list[str]:
    """Bare vLLM, as the cpu-dev profile would start it, without the launcher."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "4096",
        "--block-size",
        "128",
        *extra,
    ]


def completion(base_url: str, model: str, *, timeout: float = 120.0) -> tuple[int, Any]:
    # ignore_eos: random weights may pick the end-of-sequence token first, which would be an empty text.
    return post_json(
        f"{base_url}/v1/completions",
        {
            "model": model,
            "prompt": "Hello, my name is",
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,
        },
        timeout=timeout,
    )


def chat(base_url: str, model: str, *, timeout: float = 120.0) -> tuple[int, Any]:
    return post_json(
        f"{base_url}/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": "Hello! How are you?"}],
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,
        },
        timeout=timeout,
    )
