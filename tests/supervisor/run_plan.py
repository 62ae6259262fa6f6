"""Runs the supervisor on a plan given as JSON in argv[1]: the launcher as `launch run` starts it,
without the configuration layers (so these tests do not depend on profiles or dialects)."""

import json
import sys

from launcher import logs
from launcher.plan import Plan
from launcher.settings import SupervisorSettings
from launcher.supervisor import exec_plan, run_supervised

spec = json.loads(sys.argv[1])
logs.configure(spec.get("log_format", "json"), spec.get("log_level", "info"))
plan = Plan(
    argv=spec["argv"],
    env=spec.get("env", {}),
    cwd=spec.get("cwd"),
    dialect="vllm-cpu",
    profiles=[],
    entrypoint=spec.get("entrypoint", "openai"),
    model=spec.get("model"),
    served_model_name=spec.get("served_model_name"),
    host="127.0.0.1",
    port=spec.get("port", 8000),
    supervisor=SupervisorSettings(**spec.get("supervisor", {})),
    status_port=spec.get("status_port"),
)
if spec.get("exec"):
    exec_plan(plan)
sys.exit(run_supervised(plan))
