"""The container image and the Kubernetes manifests, checked without a Docker engine or a cluster.

What is validated how:
- Core objects (ConfigMap, Deployment, Service) and the pod templates inside the LeaderWorkerSet:
  kubernetes-validate's strict schemas (the Kubernetes API's OpenAPI, unknown fields rejected) for an
  older and the newest Kubernetes it knows.
- The LeaderWorkerSet itself: its CRD's openAPIV3Schema (LWS v0.10.0, vendored in tests/fixtures/k8s)
  with jsonschema, plus the API server's strict field validation (no field the schema does not name).
- The contract: each container's args and env are rendered by the launcher's own planner, and the plan
  must agree with the manifest (ports, probe paths and budgets, grace period, cache and model mounts,
  the role and the parallel layout of each pod of the group); and the guide's scheduler, node selector,
  NPU resources and driver mounts are all there.
- The Dockerfile: parsed (dockerfile-parse); ENTRYPOINT, CMD, base image, users; every file it copies
  exists and is not excluded by .dockerignore; and the wheel it builds is built here from exactly those
  files and holds the launcher, its profiles and the `launch` command.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from launcher import cli, planner, profiles, ray_roles, supervisor
from launcher.host import HostFacts
from launcher.plan import Plan
from launcher.status import Status, make_app
from tests.support import REPO, model

DEPLOY = REPO / "deploy" / "k8s"
LWS_SCHEMA = REPO / "tests" / "fixtures" / "k8s" / "leaderworkerset-v0.10.0.schema.json"
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
NPU = "huawei.com/ascend-1980"
# The guide's pod (seed 000, "Step2 配置pod"): scheduler, node selector and its driver mounts (mountPath
# in the container -> hostPath on the node), kept as they are.
GUIDE_SCHEDULER = "volcano"
GUIDE_NODE_SELECTOR = {"accelerator/huawei-npu": "ascend-1980"}
GUIDE_DRIVER_MOUNTS = {
    "/usr/local/Ascend/driver": "/usr/local/Ascend/driver",
    "/usr/local/Ascend/add-ons": "/usr/local/Ascend/add-ons",
    "/etc/hccn.conf": "/etc/hccn.conf",
    "/etc/localtime": "/etc/localtime",
    "/usr/local/sbin/npu-smi": "/usr/local/sbin/npu-smi",
}
GUIDE_VLLM_PORT = 8080
POD_IP = "10.244.1.7"
MARGIN = 5.0  # seconds of grace beyond the launcher's own worst case


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def lws_templates() -> dict[str, dict[str, Any]]:
    template = one(documents("lws-multinode.yaml"), "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    return {"leader": template["leaderTemplate"], "worker": template["workerTemplate"]}


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "deployment", one(documents("deployment.yaml"), "Deployment")["spec"]["template"]
    yield from lws_templates().items()


# Schema validation


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", ["deployment.yaml", "lws-multinode.yaml"])
def test_core_objects_are_valid_for_the_kubernetes_api(name: str, version: str) -> None:
    core = [d for d in documents(name) if d["apiVersion"] in ("v1", "apps/v1")]
    assert core
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_lws_pod_templates_are_valid_pod_templates(version: str) -> None:
    for role, template in lws_templates().items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role}, "template": template}
        kubernetes_validate.validate(wrapped, version, strict=True)


def test_the_validators_reject_mistakes() -> None:
    deployment = copy.deepcopy(one(documents("deployment.yaml"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    lws = copy.deepcopy(one(documents("lws-multinode.yaml"), "LeaderWorkerSet"))
    lws["spec"]["leaderWorkerTemplate"]["size"] = "two"
    assert lws_errors(lws)
    lws["spec"]["leaderWorkerTemplate"]["size"] = 2
    lws["spec"]["leaderWorkerTemplate"]["sise"] = 2
    assert lws_errors(lws) == ["$.spec.leaderWorkerTemplate: unknown field 'sise'"]


def lws_schema() -> dict[str, Any]:
    crd: dict[str, Any] = json.loads(LWS_SCHEMA.read_text())
    schema: dict[str, Any] = crd["openAPIV3Schema"]
    return schema


def unknown_fields(instance: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Fields the schema does not name: the API server's strict field validation rejects them (the
    OpenAPI schema itself allows them, and a non-strict server would silently drop them)."""
    errors: list[str] = []
    if isinstance(instance, dict) and "properties" in schema:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return errors
        for key, value in instance.items():
            if key in schema["properties"]:
                errors += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif "additionalProperties" not in schema:
                errors.append(f"{path}: unknown field {key!r}")
    elif isinstance(instance, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in instance.items():
            errors += unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return errors


def lws_errors(doc: dict[str, Any]) -> list[str]:
    schema = lws_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    return errors + unknown_fields(doc, schema)


def test_leaderworkerset_is_valid_for_its_crd() -> None:
    doc = one(documents("lws-multinode.yaml"), "LeaderWorkerSet")
    crd = json.loads(LWS_SCHEMA.read_text())
    assert doc["apiVersion"] == f"{crd['group']}/{crd['version']}" and doc["kind"] == crd["kind"]
    assert lws_errors(doc) == []


# The contract between the manifests and the launcher


def container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def container_env(spec: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: values, the pod IP, $(VAR) references."""
    env: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(item["value"]))
        else:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, item
            value = POD_IP
        env[item["name"]] = value
    return env


def config_map_text(docs: list[dict[str, Any]], template: dict[str, Any], env: dict[str, str]) -> str:
    """The file LAUNCH_CONFIG names, from the ConfigMap mounted at its directory."""
    mounts = {m["mountPath"]: m["name"] for m in container(template)["volumeMounts"]}
    directory, _, key = env["LAUNCH_CONFIG"].rpartition("/")
    volume = volumes(template)[mounts[directory]]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
    text: str = config["data"][key]
    return text


def volumes(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in template["spec"]["volumes"]}


def mounted(template: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) mounted at `path`."""
    mount = next(m for m in container(template)["volumeMounts"] if m["mountPath"] == path)
    return mount, volumes(template)[mount["name"]]


def plan_for(
    docs: list[dict[str, Any]], template: dict[str, Any], tmp_path: Path, model_name: str, group: dict[str, str]
) -> Plan:
    """What `launch` in this container would do, rendered by the real planner with the container's
    args and env (the model and config paths pointed at local copies)."""
    spec = container(template)
    env = container_env(spec)
    config = tmp_path / "config.yaml"
    config.write_text(config_map_text(docs, template, env))
    environ = {**env, **group, "LAUNCH_CONFIG": str(config), "LAUNCH_MODEL": model(model_name)}
    args = cli._parser().parse_args(spec["args"])
    assert isinstance(args, argparse.Namespace) and args.command == "run"
    facts = HostFacts(environ=environ, python="python3", installed={"vllm-ascend": "0.23.0"})
    return planner.build(cli._request(args, []), facts, strict=True)


def port_number(spec: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in spec["ports"] if p["name"] == port))


def probe_budget(probe: dict[str, Any]) -> float:
    return float(
        probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) + probe.get("initialDelaySeconds", 0)
    )


def check_probes_and_grace(template: dict[str, Any], plan: Plan, wait: float = 0.0, stop_extra: float = 0.0) -> None:
    spec = container(template)
    served = {r.resource.canonical for r in make_app(Status()).router.routes() if r.resource is not None}
    assert plan.status_port is not None
    for kind, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        probe = spec[kind]["httpGet"]
        assert probe["path"] == path and path in served, kind
        assert port_number(spec, probe["port"]) == plan.status_port, kind
    # The kubelet must not give up before the launcher does: forming the group, then loading and compiling
    # (a Ray worker is ready once `ray start` runs: vLLM loads on it, but the leader's probes wait for that).
    loading = plan.supervisor.start_timeout if plan.probe == "http" else 0.0
    assert probe_budget(spec["startupProbe"]) >= wait + loading
    # SIGTERM -> vLLM's stop_timeout -> SIGKILL of leftovers (-> the leader's head) before Kubernetes kills all.
    needed = plan.supervisor.stop_timeout + supervisor.KILL_TIMEOUT + stop_extra + MARGIN
    assert template["spec"]["terminationGracePeriodSeconds"] >= needed
    assert spec["terminationMessagePath"] == plan.supervisor.termination_log
    assert spec["terminationMessagePolicy"] == "FallbackToLogsOnError"


def check_guide_pod(template: dict[str, Any], env: dict[str, str]) -> None:
    pod, spec = template["spec"], container(template)
    assert pod["schedulerName"] == GUIDE_SCHEDULER
    assert pod["nodeSelector"] == GUIDE_NODE_SELECTOR
    assert spec["resources"]["requests"][NPU] == spec["resources"]["limits"][NPU]
    for path, host in GUIDE_DRIVER_MOUNTS.items():
        _, volume = mounted(template, path)
        assert volume["hostPath"]["path"] == host, path
    _, shm = mounted(template, "/dev/shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    model_mount, model_volume = mounted(template, env["LAUNCH_MODEL"])
    assert model_mount.get("readOnly") is True and model_volume["hostPath"]["type"] == "Directory"
    _, cache = mounted(template, env["LAUNCH_CACHE_DIR"])
    assert cache["hostPath"]["type"] == "DirectoryOrCreate"  # compiled graphs outlive the pod on its node
    assert spec["imagePullPolicy"] == "IfNotPresent" and "command" not in spec  # the image's ENTRYPOINT runs


def test_deployment_agrees_with_the_launcher(tmp_path: Path) -> None:
    docs = documents("deployment.yaml")
    template = one(docs, "Deployment")["spec"]["template"]
    spec, env = container(template), container_env(container(template))
    plan = plan_for(docs, template, tmp_path, "qwen2-7b", {})
    assert plan.role == "single" and plan.ray is None
    assert plan.port == port_number(spec, "http") == GUIDE_VLLM_PORT
    assert plan.host == "0.0.0.0"
    check_probes_and_grace(template, plan)
    check_guide_pod(template, env)
    assert "--tensor-parallel-size=8" in plan.argv and spec["resources"]["limits"][NPU] == "8"
    assert plan.env["USE_PFA_HIGH_PRECISION_MODE"] == "1"  # the guide's rule for Qwen2-7B, from config.json
    assert plan.cache is not None and plan.cache.root == env["LAUNCH_CACHE_DIR"]
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "status"}
    annotations = template["metadata"]["annotations"]
    assert (
        int(annotations["prometheus.io/port"]) == plan.status_port and annotations["prometheus.io/path"] == "/metrics"
    )


def test_leaderworkerset_agrees_with_the_launcher(tmp_path: Path) -> None:
    docs = documents("lws-multinode.yaml")
    lws = one(docs, "LeaderWorkerSet")
    group_spec = lws["spec"]["leaderWorkerTemplate"]
    size, name = group_spec["size"], lws["metadata"]["name"]
    assert group_spec["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert lws["spec"].get("startupPolicy", "LeaderCreated") == "LeaderCreated"  # LeaderReady would deadlock
    leader_address = f"{name}-0.{name}.default"
    group = {"LWS_GROUP_SIZE": str(size), "LWS_LEADER_ADDRESS": leader_address}
    templates = lws_templates()

    leader_tpl, worker_tpl = templates["leader"], templates["worker"]
    leader = plan_for(docs, leader_tpl, tmp_path, "qwen2-72b", {**group, "LWS_WORKER_INDEX": "0"})
    worker = plan_for(docs, worker_tpl, tmp_path, "qwen2-72b", {**group, "LWS_WORKER_INDEX": "1"})
    assert leader.role == "leader" and worker.role == "worker"
    assert leader.ray is not None and worker.ray is not None
    npus = int(container(leader_tpl)["resources"]["limits"][NPU])
    assert leader.ray.npus_per_node == worker.ray.npus_per_node == npus
    assert leader.ray.group_size == size
    assert f"--tensor-parallel-size={npus}" in leader.argv and f"--pipeline-parallel-size={size}" in leader.argv
    assert "--distributed-executor-backend=ray" in leader.argv
    ray_port = port_number(container(leader_tpl), "ray")
    assert f"--port={ray_port}" in leader.ray.head_argv
    assert f"--address={leader_address}:{ray_port}" in worker.argv and "--block" in worker.argv
    assert f"--node-ip-address={POD_IP}" in worker.argv and f"--node-ip-address={POD_IP}" in leader.ray.head_argv
    assert leader.port == port_number(container(leader_tpl), "http") == GUIDE_VLLM_PORT

    check_probes_and_grace(leader_tpl, leader, wait=leader.ray.wait_timeout, stop_extra=leader.ray.stop_timeout)
    check_probes_and_grace(worker_tpl, worker, wait=worker.ray.wait_timeout)
    assert ray_roles.KILL_TIMEOUT <= MARGIN
    for template in (leader_tpl, worker_tpl):
        check_guide_pod(template, container_env(container(template)))
    service = one(docs, "Service")
    assert service["spec"]["selector"] == {"leaderworkerset.sigs.k8s.io/name": name, "role": "leader"}
    assert leader_tpl["metadata"]["labels"]["role"] == "leader" != worker_tpl["metadata"]["labels"]["role"]


# The image


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(REPO / "Dockerfile"))


def instructions(kind: str) -> list[str]:
    return [str(i["value"]) for i in dockerfile().structure if i["instruction"] == kind]


def final_stage() -> list[dict[str, Any]]:
    structure = dockerfile().structure
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    return list(structure[last_from:])


def test_entrypoint_and_default_command() -> None:
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["launch"]
    cmd = json.loads(instructions("CMD")[-1])
    args = cli._parser().parse_args(cmd)
    assert args.command == "run" and all(p in profiles.builtin_names() for p in args.profile)
    assert instructions("STOPSIGNAL")[-1] == "SIGTERM"


def test_base_image_and_stages() -> None:
    assert instructions("ARG")[0] == "BASE_IMAGE=quay.io/ascend/vllm-ascend:v0.23.0"
    assert [i.split()[0] for i in instructions("FROM")] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    final = final_stage()
    runs = " ".join(str(i["value"]) for i in final if i["instruction"] == "RUN")
    for build_tool in ("apt-get", "gcc", "build-essential", "pip wheel", "git "):
        assert build_tool not in runs  # the wheel is built in the first stage only
    assert "--no-cache-dir" in runs and "rm -rf /tmp/wheels" in runs
    copies = [str(i["value"]) for i in final if i["instruction"] == "COPY"]
    assert copies[0] == "--from=wheel /wheels/ /tmp/wheels/"
    users = [str(i["value"]) for i in final if i["instruction"] == "USER"]
    assert users == ["${LAUNCH_USER:-root}"]
    assert "HwHiAiUser" in runs


def test_image_environment_matches_the_manifests() -> None:
    env = dict(pair.split("=", 1) for pair in " ".join(instructions("ENV")).split())
    deployment = container(one(documents("deployment.yaml"), "Deployment")["spec"]["template"])
    manifest = container_env(deployment)
    for name in ("LAUNCH_STATUS_PORT", "LAUNCH_CACHE_DIR", "LAUNCH_CONFIG"):
        assert env[name] == manifest[name], name
    exposed = {int(p) for p in instructions("EXPOSE")[-1].split()}
    assert exposed == {GUIDE_VLLM_PORT, int(env["LAUNCH_STATUS_PORT"]), 6379}


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    parts = Path(path).parts
    return any(fnmatch(path, p) or fnmatch(parts[0], p) or fnmatch(path, f"{p}/*") for p in patterns)


def copied_sources() -> list[str]:
    sources: list[str] = []
    for value in instructions("COPY"):
        words = value.split()
        if any(w.startswith("--from=") for w in words):
            continue
        sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def test_every_copied_file_exists_and_reaches_the_build() -> None:
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "launcher/", "profiles/", "deploy/config.yaml"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"


def test_default_site_config_is_a_valid_user_profile(launch: Any) -> None:
    result = launch(
        "render", "--model", model("llama-tiny"), "--dialect", "vllm-ascend", "--config", "deploy/config.yaml"
    )
    assert result.code == 0, result.err
    assert result.json()["argv"][2] == "vllm.entrypoints.openai.api_server"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_build_when_an_engine_is_present() -> None:
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker engine here: the build itself is checked where one runs")
    # A real build on a small Python base (the launcher alone), then the ENTRYPOINT answers.
    tag = "launch-test-image:latest"
    build = subprocess.run(
        ["docker", "build", "--build-arg", "BASE_IMAGE=python:3.11-slim", "-t", tag, str(REPO)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    try:
        assert build.returncode == 0, build.stderr[-3000:]
        run = subprocess.run(["docker", "run", "--rm", tag, "profiles"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert [line.split()[0] for line in run.stdout.splitlines()] == profiles.builtin_names()
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


def test_the_wheel_builds_from_exactly_the_copied_files(tmp_path: Path) -> None:
    """The first stage's `pip wheel .`, run here on a context holding only what the Dockerfile copies."""
    context = tmp_path / "context"
    for source in copied_sources():
        target = context / source
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, target)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = wheels.glob("launch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "launch = launcher.cli:main" in archive.read(entry_points).decode()
    for name in profiles.builtin_names():
        assert f"launcher/_builtin_profiles/{name}.yaml" in names
    assert {"launcher/roles.py", "launcher/ray_roles.py", "launcher/cli.py"} <= names
