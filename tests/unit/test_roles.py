"""Multi-node roles as `launch render` and `launch check` show them: which role a pod plays (from
LeaderWorkerSet's variables or --role), the leader's vLLM flags, the worker's `ray start`, and exit 2 with
a fix when something a role needs is missing. Pure: nothing here starts Ray."""

from __future__ import annotations

import json
import shlex
import socket
from typing import Any

import pytest

from launcher import roles
from tests.support import REPO, model

LLAMA = model("llama-tiny")
ASCEND = ["--model", LLAMA, "--dialect", "vllm-ascend"]
FIXTURES = REPO / "tests" / "fixtures" / "ray"
LWS_LEADER = {"LWS_WORKER_INDEX": "0", "LWS_GROUP_SIZE": "2", "LWS_LEADER_ADDRESS": "vllm-0.vllm.default"}
LWS_WORKER = {**LWS_LEADER, "LWS_WORKER_INDEX": "1"}


@pytest.fixture(autouse=True)
def no_group_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LWS_WORKER_INDEX", "LWS_GROUP_SIZE", "LWS_LEADER_ADDRESS", "RAY_ADDRESS", "HCCL_IF_IP"):
        monkeypatch.delenv(name, raising=False)


def render(launch: Any, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = launch("render", *args, env=env)
    assert result.code == 0, result.err
    plan: dict[str, Any] = result.json()
    return plan


def flag(plan: dict[str, Any], name: str) -> str | None:
    for arg in plan["argv"]:
        if arg.startswith(f"--{name}="):
            return str(arg.split("=", 1)[1])
    return None


# Which role


@pytest.mark.parametrize(
    ("env", "args", "role", "why"),
    [
        ({}, [], "single", "no LWS_WORKER_INDEX"),
        (LWS_LEADER, [], "leader", "LWS_WORKER_INDEX=0"),
        (LWS_WORKER, [], "worker", "LWS_WORKER_INDEX=1"),
        ({**LWS_WORKER, "LWS_GROUP_SIZE": "1", "LWS_WORKER_INDEX": "0"}, [], "single", "LWS_GROUP_SIZE=1"),
        ({**LWS_WORKER, "LAUNCH_ROLE": "single"}, [], "single", "LAUNCH_ROLE"),
        ({**LWS_WORKER, "LAUNCH_ROLE": "single"}, ["--role", "leader"], "leader", "--role"),
    ],
)
def test_role_comes_from_leaderworkerset_unless_set(
    launch: Any, env: dict[str, str], args: list[str], role: str, why: str
) -> None:
    env = {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3", **env}
    plan = render(launch, *ASCEND, *args, env=env)
    if role == "single":
        assert "role" not in plan and "ray" not in plan  # single-node renders stay as they were
        assert plan["argv"][2] == "vllm.entrypoints.openai.api_server"
        assert flag(plan, "distributed-executor-backend") is None
    else:
        assert plan["role"] == role and plan["ray"]["role"] == role
        assert any(line.startswith(f"role {role} (") and why in line for line in plan["info"]), plan["info"]


def test_leader_runs_vllm_on_ray_with_tp_per_node_and_pp_per_node_count(launch: Any) -> None:
    plan = render(launch, *ASCEND, env={**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8"})
    assert plan["argv"][:3] == [plan["argv"][0], "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(plan, "distributed-executor-backend") == "ray"
    assert flag(plan, "tensor-parallel-size") == "8"  # the base profile's 1 is a default the role replaces
    assert flag(plan, "pipeline-parallel-size") == "2"
    assert plan["sources"]["vllm.tensor_parallel_size"].startswith("role leader: the NPUs of one node")
    assert plan["env"]["RAY_ADDRESS"] == "127.0.0.1:6379"
    assert plan["env"]["RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES"] == "1"
    ray = plan["ray"]
    assert ray["group_size"] == 2 and ray["npus_per_node"] == 8
    assert ray["head_argv"][-5:] == [
        "start",
        "--head",
        "--port=6379",
        "--disable-usage-stats",
        '--resources={"NPU": 8}',
    ]
    assert ray["status_argv"][-2:] == ["status", "--address=127.0.0.1:6379"]
    assert ray["head_argv"][1:3] == ["-m", "ray.scripts.scripts"]  # the Ray of vLLM's Python, never imported


def test_npus_per_node_from_the_visible_devices(launch: Any) -> None:
    plan = render(launch, *ASCEND, env={**LWS_LEADER, "ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3"})
    assert flag(plan, "tensor-parallel-size") == "4"
    assert plan["ray"]["npus_per_node"] == 4
    plan = render(launch, *ASCEND, env={**LWS_LEADER, "ASCEND_VISIBLE_DEVICES": "4,5"})  # the device plugin's
    assert flag(plan, "tensor-parallel-size") == "2"
    plan = render(launch, *ASCEND, env={**LWS_LEADER, "ASCEND_VISIBLE_DEVICES": "0,1,2,3", "LAUNCH_DEVICES": "2,3"})
    assert flag(plan, "tensor-parallel-size") == "2" and plan["ray"]["npus_per_node"] == 2


def test_parallel_sizes_the_user_set_are_kept(launch: Any) -> None:
    env = {**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8"}
    plan = render(
        launch, *ASCEND, "--set", "vllm.tensor_parallel_size=16", "--set", "vllm.pipeline_parallel_size=1", env=env
    )
    assert flag(plan, "tensor-parallel-size") == "16" and flag(plan, "pipeline-parallel-size") == "1"
    assert plan["sources"]["vllm.tensor_parallel_size"] == "--set vllm.tensor_parallel_size=16"


def test_parallel_sizes_beyond_the_group_are_refused(launch: Any) -> None:
    env = {**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8", "ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    result = launch("render", *ASCEND, "--set", "vllm.tensor_parallel_size=16", env=env)
    assert result.code == 2
    assert "vllm.tensor_parallel_size = 16 (from --set vllm.tensor_parallel_size=16)" in result.err
    assert "16 × 2 = 32 NPUs, but the group has 2 nodes × 8 NPUs = 16" in result.err
    assert "fix: leave both unset" in result.err


def test_mp_backend_cannot_span_nodes(launch: Any) -> None:
    env = {**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8", "LAUNCH_VLLM__DISTRIBUTED_EXECUTOR_BACKEND": "mp"}
    result = launch("render", *ASCEND, env=env)
    assert result.code == 2
    assert "vllm.distributed_executor_backend = 'mp' (from LAUNCH_VLLM__DISTRIBUTED_EXECUTOR_BACKEND)" in result.err
    assert "multi-node serving runs vLLM's workers on Ray" in result.err


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (["--role", "leader"], {"LAUNCH_RAY__NPUS_PER_NODE": "8"}, ["ray.group_size", "LAUNCH_RAY__GROUP_SIZE"]),
        (["--role", "worker"], {}, ["ray.leader_address", "a worker must know the leader's address"]),
        ([], {**LWS_LEADER}, ["cannot tell how many NPUs each node has", "LAUNCH_RAY__NPUS_PER_NODE"]),
        ([], {**LWS_LEADER, "LWS_WORKER_INDEX": "first"}, ["LWS_WORKER_INDEX = 'first'", "whole number"]),
        (["--role", "boss"], {}, ["invalid choice: 'boss'"]),
    ],
)
def test_what_a_role_needs_is_exit_2_with_a_fix(
    launch: Any, capsys: pytest.CaptureFixture[str], args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    try:
        result = launch("render", *ASCEND, *args, env=env)
        code, err = result.code, result.err
    except SystemExit as exit_:  # argparse rejects a bad --role itself
        code, err = int(str(exit_.code)), capsys.readouterr().err
    assert code == 2
    for fragment in fragments:
        assert fragment in err


def test_worker_supervises_ray_start_with_the_leaders_address(launch: Any) -> None:
    env = {**LWS_WORKER, "LAUNCH_RAY__NPUS_PER_NODE": "8", "LAUNCH_RAY__NODE_IP": "10.0.0.7"}
    plan = render(launch, *ASCEND, "--set", "supervisor.warmup=true", env=env)
    assert plan["argv"][1:] == [
        "-m",
        "ray.scripts.scripts",
        "start",
        "--address=vllm-0.vllm.default:6379",
        "--block",
        "--disable-usage-stats",
        '--resources={"NPU": 8}',
        "--node-ip-address=10.0.0.7",
    ]
    # Ray starts vLLM's workers on this node with the raylet's environment: it must be vLLM's.
    assert plan["env"]["VLLM_HOST_IP"] == "10.0.0.7" and plan["env"]["HCCL_IF_IP"] == "10.0.0.7"
    assert "RAY_ADDRESS" not in plan["env"]
    assert plan["supervisor"]["warmup"] is False  # nothing to warm up: vLLM's API is on the leader
    assert plan["ray"]["address"] == "vllm-0.vllm.default:6379"


def test_ray_options_from_settings(launch: Any) -> None:
    env = {
        **LWS_WORKER,
        "LAUNCH_RAY__PORT": "7000",
        "LAUNCH_RAY__TEMP_DIR": "/scratch/ray",
        "LAUNCH_RAY__ARGS": "--num-cpus=32 --object-store-memory=10000000000",
        "LAUNCH_RAY__COMMAND": "/opt/venv/bin/ray",
        "LAUNCH_RAY__LEADER_ADDRESS": "10.0.0.1",  # beats LWS_LEADER_ADDRESS
    }
    plan = render(launch, *ASCEND, env=env)
    assert plan["argv"] == [
        "/opt/venv/bin/ray",
        "start",
        "--address=10.0.0.1:7000",
        "--block",
        "--disable-usage-stats",
        "--temp-dir=/scratch/ray",
        "--num-cpus=32",
        "--object-store-memory=10000000000",
    ]  # no --resources: the worker does not know its NPUs, Ray counts them


def test_container_variables_beat_the_roles(launch: Any) -> None:
    env = {**LWS_WORKER, "LAUNCH_RAY__NODE_IP": "10.0.0.7", "HCCL_IF_IP": "192.168.1.7"}
    plan = render(launch, *ASCEND, env=env)
    assert "HCCL_IF_IP" not in plan["env"]  # the container's own value stays
    assert any("HCCL_IF_IP=192.168.1.7 from the container environment wins" in w for w in plan["warnings"])


def test_leader_shell_render_starts_the_head_before_vllm(launch: Any) -> None:
    env = {**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8"}
    result = launch("render", *ASCEND, "--format", "shell", env=env)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    head = next(i for i, line in enumerate(lines) if "start --head" in line)
    wait = next(i for i, line in enumerate(lines) if line.startswith("# launch waits here until 2 nodes and 16 NPUs"))
    exec_ = next(i for i, line in enumerate(lines) if line.startswith("exec "))
    assert head < wait < exec_
    assert shlex.split(lines[head])[-4:] == ["--head", "--port=6379", "--disable-usage-stats", '--resources={"NPU": 8}']


def test_leader_cannot_exec(launch: Any) -> None:
    env = {**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8"}
    result = launch("run", "--exec", "--model", LLAMA, "--dialect", "vllm-cpu", env=env)
    assert result.code == 2
    assert "--exec" in result.err and "drop --exec on the leader" in result.err


def test_check_of_a_worker_does_not_need_vllms_port(launch: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = ["check", "--model", LLAMA, "--dialect", "vllm-cpu", "--set", "vllm.host=127.0.0.1"]
        args += ["--set", f"vllm.port={port}"]
        worker = launch(*args, env={**LWS_WORKER})
        single = launch(*args)
    assert worker.code == 0, worker.err
    assert single.code == 3 and "already in use" in single.err


# Pure helpers


def test_parse_status_counts_live_nodes_and_npus() -> None:
    two = (FIXTURES / "status-2-nodes.txt").read_text()
    assert roles.parse_status(two) == (2, 4.0)
    idle = (FIXTURES / "status-autoscaler-v2-1-idle-node.txt").read_text()
    assert roles.parse_status(idle) == (1, 2.0)
    assert roles.parse_status("No cluster status. It may take a few seconds for the Ray internal services") == (
        0,
        None,
    )
    pending = "Active:\n (no active nodes)\nPending:\n 1 node_abc\nRecent failures:\n 2 node_def\n"
    assert roles.parse_status(pending) == (0, None)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("lws-0.lws", "lws-0.lws:6379"),
        ("10.0.0.1:7000", "10.0.0.1:7000"),
        ("fd00::1", "[fd00::1]:6379"),
        ("[fd00::1]:7000", "[fd00::1]:7000"),
    ],
)
def test_join_address(host: str, address: str) -> None:
    assert roles.join_address(host, 6379) == address


def test_render_json_is_plain_data(launch: Any) -> None:
    plan = render(launch, *ASCEND, env={**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8"})
    assert json.loads(json.dumps(plan)) == plan
    assert plan["ray"]["wait_timeout"] == 900.0


def test_the_graph_cache_is_the_leaders_only(launch: Any, tmp_path: Any) -> None:
    env = {**LWS_LEADER, "LAUNCH_RAY__NPUS_PER_NODE": "8", "LAUNCH_CACHE_DIR": str(tmp_path)}
    leader = render(launch, *ASCEND, env=env)
    assert leader["cache"] is not None and leader["env"]["VLLM_CACHE_ROOT"].startswith(str(tmp_path))
    worker = render(launch, *ASCEND, env={**env, "LWS_WORKER_INDEX": "1"})
    assert worker["cache"] is None and "VLLM_CACHE_ROOT" not in worker["env"] and worker["cwd"] is None
    assert any("cache_dir is not used on a Ray worker" in line for line in worker["info"])
