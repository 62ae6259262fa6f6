"""The launcher runs in containers without torch/transformers: the demo and tiny-model modules must
import without them (they import those lazily, inside the functions that need them)."""

from __future__ import annotations

import subprocess
import sys


def test_demo_and_tinymodel_import_without_torch_transformers_tokenizers() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'tokenizers', 'vllm'):\n"
        "    sys.modules[name] = None  # makes `import name` raise ImportError\n"
        "import launcher.tinymodel, launcher.demo\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
