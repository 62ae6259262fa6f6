"""Multi-node roles with a real Ray on this machine: a leader (Ray head, a tiny HTTP server standing in
for vLLM) and a worker (`ray start --block`), each a `python -m launcher run` as in a pod.

Every address is a loopback one: the head's node IP is 127.0.0.2 and the worker's 127.0.0.3 (Ray turns
127.0.0.1 into the machine's network address, any other 127.x it keeps). Ray's ports are picked free,
its temp dir is a short per-test directory, the NPU resource is faked with --resources. This test module
makes pytest a subreaper, so whatever a launcher leaves behind becomes pytest's child: the tests assert
that nothing is left, and the teardown kills and reaps anything that is.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shlex
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .helpers import Launcher, child, free_port, wait_until

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install '.[ray]')"
)

LEADER_IP = "127.0.0.2"
WORKER_IP = "127.0.0.3"
RAY_DEADLINE = 90.0  # a head or a worker starts in ~5 s alone; other tests may load the 2 cores
PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0


def leftovers() -> list[psutil.Process]:
    """Live processes below pytest: a launcher's, or one it left behind (re-parented to us)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(autouse=True)
def adopt_orphans() -> Iterator[None]:
    _subreaper(True)
    try:
        yield
    finally:
        for proc in leftovers():
            try:
                proc.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(psutil.Process().children(recursive=True), timeout=10)
        for proc in psutil.Process().children():
            try:
                os.waitpid(proc.pid, os.WNOHANG)  # zombies of orphans we adopted
            except ChildProcessError:
                continue
        _subreaper(False)


@pytest.fixture
def temp_dirs() -> Iterator[Callable[[], str]]:
    """Short directories for Ray (its socket paths must stay under 107 bytes)."""
    made: list[str] = []

    def make() -> str:
        path = tempfile.mkdtemp(prefix="lr", dir="/tmp")
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def start(
    run_launcher: Callable[..., Launcher],
    role: str,
    *,
    ray_port: int,
    temp_dir: str,
    wait_timeout: float = 120,
    supervisor: dict[str, Any] | None = None,
) -> Launcher:
    ports = [free_port() for _ in range(5)]
    args = [
        f"--dashboard-agent-listen-port={ports[0]}",
        f"--dashboard-agent-grpc-port={ports[1]}",
        f"--runtime-env-agent-port={ports[2]}",
        f"--metrics-export-port={ports[3]}",
        "--num-cpus=1",
        "--object-store-memory=80000000",
    ]
    if role == "leader":
        args += ["--include-dashboard=false", f"--dashboard-port={ports[4]}"]
    env = {
        "LAUNCH_ROLE": role,
        "LAUNCH_RAY__PORT": str(ray_port),
        "LAUNCH_RAY__GROUP_SIZE": "2",
        "LAUNCH_RAY__NPUS_PER_NODE": "1",
        "LAUNCH_RAY__NODE_IP": LEADER_IP if role == "leader" else WORKER_IP,
        "LAUNCH_RAY__LEADER_ADDRESS": LEADER_IP,
        "LAUNCH_RAY__TEMP_DIR": temp_dir,
        "LAUNCH_RAY__POLL_INTERVAL": "0.5",
        "LAUNCH_RAY__WAIT_TIMEOUT": str(wait_timeout),
        "LAUNCH_RAY__STOP_TIMEOUT": "10",
        "LAUNCH_RAY__ARGS": shlex.join(args),
    }
    return run_launcher(child("fake_vllm.py"), env=env, status_port=free_port(), supervisor=supervisor)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def assert_nothing_left() -> None:
    wait_until(lambda: not leftovers(), timeout=15, what="every process to be gone")


def test_leader_waits_for_the_group_serves_and_both_stop_cleanly(
    run_launcher: Callable[..., Launcher], temp_dirs: Callable[[], str]
) -> None:
    ray_port = free_port()
    leader = start(run_launcher, "leader", ray_port=ray_port, temp_dir=temp_dirs())
    head = leader.wait_for("ray_head_started", timeout=RAY_DEADLINE)
    assert head["address"] == f"{LEADER_IP}:{ray_port}"
    waiting = leader.wait_for("ray_group_waiting", where=lambda e: e["nodes"] == 1, timeout=RAY_DEADLINE)
    assert (waiting["nodes_expected"], waiting["npus"], waiting["npus_expected"]) == (2, 1.0, 2)
    status, body = leader.get("/readyz")
    assert status == 503 and b"waiting_for_ray" in body
    assert leader.get_json("/status")["state"] == "waiting_for_ray"
    assert not leader.find("child_started")  # vLLM waits for the group

    worker = start(run_launcher, "worker", ray_port=ray_port, temp_dir=temp_dirs())
    assert worker.wait_for("ray_head_reachable", timeout=RAY_DEADLINE)["address"] == f"{LEADER_IP}:{ray_port}"
    joined = worker.wait_for("child_started", timeout=RAY_DEADLINE)["argv"]
    assert joined[3:6] == ["start", f"--address={LEADER_IP}:{ray_port}", "--block"]
    ready = leader.wait_for("ray_group_ready", timeout=RAY_DEADLINE)
    assert (ready["nodes"], ready["npus"]) == (2, 2.0)

    started = leader.wait_for("child_started", timeout=RAY_DEADLINE)
    argv = started["argv"]
    assert argv[1].endswith("fake_vllm.py")
    for expected in ("--distributed-executor-backend=ray", "--tensor-parallel-size=1", "--pipeline-parallel-size=2"):
        assert expected in argv
    leader.wait_for("ready", timeout=RAY_DEADLINE)
    assert leader.get("/readyz")[0] == 200 and worker.get("/readyz")[0] == 200

    # vLLM dies: the supervisor restarts it and the head stays up for the new one.
    os.kill(started["pid"], signal.SIGKILL)
    assert leader.wait_for("child_started", count=2, timeout=RAY_DEADLINE)["pid"] != started["pid"]
    leader.wait_for("ready", count=2, timeout=RAY_DEADLINE)
    assert all(alive(pid) for pid in head["pids"]), "the Ray head must outlive a vLLM restart"

    # The pods are deleted: SIGTERM to both at once, as Kubernetes sends it.
    leader.send(signal.SIGTERM)
    worker.send(signal.SIGTERM)
    assert leader.wait_exit(60) == 0
    assert worker.wait_exit(60) == 0  # `ray start --block` exits 1 after SIGTERM by design: a clean stop
    stopped = leader.wait_for("ray_head_stopped")
    assert stopped["stop_s"] < 10
    assert not leader.find("ray_head_killed")  # every head process ended on SIGTERM
    assert worker.wait_for("child_exited")["reason"] == "stopped"
    assert not leader.other and not worker.other  # no traceback, nothing but JSON lines
    assert_nothing_left()


def test_leader_gives_up_when_the_group_does_not_form(
    run_launcher: Callable[..., Launcher], temp_dirs: Callable[[], str], tmp_path: Path
) -> None:
    termination_log = tmp_path / "termination-log"
    leader = start(
        run_launcher,
        "leader",
        ray_port=free_port(),
        temp_dir=temp_dirs(),
        wait_timeout=4,
        supervisor={"termination_log": str(termination_log)},
    )
    assert leader.wait_exit(RAY_DEADLINE) == 3
    failed = leader.wait_for("preflight_failed")
    expected = "the Ray group did not form within ray.wait_timeout=4s: 1 of 2 nodes and 1 of 2 NPUs joined"
    assert expected in failed["message"]
    assert "check the worker pods" in failed["fix"]
    assert any(line.startswith("launch: error: ray.group_size = 2") for line in leader.other)
    assert expected in termination_log.read_text()
    assert leader.find("ray_head_stopped") and not leader.find("child_started")
    assert_nothing_left()


def test_sigterm_while_the_leader_waits(run_launcher: Callable[..., Launcher], temp_dirs: Callable[[], str]) -> None:
    leader = start(run_launcher, "leader", ray_port=free_port(), temp_dir=temp_dirs())
    leader.wait_for("ray_group_waiting", timeout=RAY_DEADLINE)
    leader.send(signal.SIGTERM)
    assert leader.wait_exit(30) == 128 + signal.SIGTERM
    assert leader.wait_for("stop_requested")["signal"] == "SIGTERM"
    assert leader.find("ray_head_stopped") and not leader.find("child_started")
    assert_nothing_left()


def test_worker_waits_for_the_head_and_gives_up(run_launcher: Callable[..., Launcher]) -> None:
    nobody = free_port()
    worker = start(run_launcher, "worker", ray_port=nobody, temp_dir="/nonexistent", wait_timeout=2)
    assert worker.wait_exit(30) == 3
    waiting = worker.wait_for("ray_head_waiting")
    assert waiting["address"] == f"{LEADER_IP}:{nobody}" and "refused" in waiting["detail"].lower()
    failed = worker.wait_for("preflight_failed")
    assert f"the Ray head at {LEADER_IP}:{nobody} did not answer within 2s" in failed["message"]
    assert not worker.find("child_started")  # `ray start` never ran
    assert_nothing_left()


def test_sigterm_while_the_worker_waits(run_launcher: Callable[..., Launcher]) -> None:
    worker = start(run_launcher, "worker", ray_port=free_port(), temp_dir="/nonexistent")
    worker.wait_for("ray_head_waiting")
    assert worker.get("/readyz")[0] == 503
    worker.send(signal.SIGTERM)
    assert worker.wait_exit(30) == 128 + signal.SIGTERM
    assert not worker.find("child_started")
    assert_nothing_left()
