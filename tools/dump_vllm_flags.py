"""Dump vLLM's OpenAI-server flags as {name: {kind, option, choices}} (run inside a venv with vLLM)."""
import argparse, json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

def inner(t):
    if t is None: return None
    n = getattr(t, "__name__", "")
    if n == "_optional_type":
        for c in (t.__closure__ or ()):
            v = c.cell_contents
            if callable(v): return inner(v)
    return t

p = make_arg_parser(FlexibleArgumentParser())
out = {}
for a in p._actions:
    longs = [o for o in a.option_strings if o.startswith("--") and not o.startswith("--no-")]
    if not longs or longs[0] == "--help": continue
    name = longs[0][2:].replace("-", "_")
    t = inner(a.type); tn = getattr(t, "__name__", "")
    if isinstance(a, argparse.BooleanOptionalAction): kind = "bool"
    elif isinstance(a, argparse._StoreTrueAction): kind = "flag"
    elif a.nargs in ("+", "*"): kind = "list"
    elif t is int or tn.startswith("human_readable_int"): kind = "int"
    elif t is float: kind = "float"
    elif tn in ("parse_dataclass", "loads", "union_dict_and_str"): kind = "json"
    else: kind = "str"
    e = {"kind": kind}
    if a.choices: e["choices"] = sorted(str(c) for c in a.choices)
    out[name] = e
json.dump(out, sys.stdout, indent=0, sort_keys=True)
