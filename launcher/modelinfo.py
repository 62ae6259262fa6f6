"""What the rules need to know about a model directory, read from its config.json.

Only files the user pointed at are read (config.json, adapter_config.json); weights never are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOE_TYPES = frozenset({"mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3", "qwen3_moe"})
GRAPH_FAMILIES = frozenset({"llama", "qwen2"})  # CANNGraph/torchair: llama and qwen2, single card


@dataclass(frozen=True)
class ModelInfo:
    path: str
    config: dict[str, Any] = field(repr=False)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "")).lower()

    @property
    def architectures(self) -> list[str]:
        value = self.config.get("architectures") or []
        return [str(a) for a in value] if isinstance(value, list) else []

    @property
    def is_moe(self) -> bool:
        return self.model_type in MOE_TYPES or any("moe" in a.lower() for a in self.architectures)

    @property
    def is_llava(self) -> bool:
        return "llava" in self.model_type or any("llava" in a.lower() for a in self.architectures)

    def _int(self, key: str) -> int | None:
        value = self.config.get(key)
        if value is None and isinstance(self.config.get("text_config"), dict):
            value = self.config["text_config"].get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def length_limits(self) -> dict[str, int]:
        """config.json's limits on max_model_len: max_position_embeddings and seq_length."""
        return {k: v for k in ("max_position_embeddings", "seq_length") if (v := self._int(k)) is not None}

    @property
    def size_name(self) -> str | None:
        """A known checkpoint by its shape (the guide names Qwen2-7B/57B/72B, DeepSeek-V2-236B)."""
        hidden, layers = self._int("hidden_size"), self._int("num_hidden_layers")
        if self.model_type == "qwen2":
            return {(3584, 28): "qwen2-7b", (8192, 80): "qwen2-72b"}.get((hidden or 0, layers or 0))
        if self.model_type == "qwen2_moe" and (hidden, layers) == (3584, 28):
            return "qwen2-57b"
        if self.model_type == "deepseek_v2" and (hidden, layers) == (5120, 60):
            return "deepseek-v2-236b"
        return None

    @property
    def quantization_method(self) -> str | None:
        q = self.config.get("quantization_config") or self.config.get("quantize")
        if isinstance(q, dict):
            method = q.get("quant_method") or q.get("quantization") or q.get("method")
            return str(method).lower() if method else None
        return str(q).lower() if isinstance(q, str) else None

    @property
    def is_w8a8(self) -> bool:
        method = self.quantization_method or ""
        return "w8a8" in method or "smoothquant" in method or "w8a8" in self.path.lower()


class ModelDirError(Exception):
    """The directory or its config.json is missing or unreadable; `what` says which."""

    def __init__(self, what: str, path: str) -> None:
        super().__init__(what)
        self.what = what
        self.path = path


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{path.name} not found", str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{path.name} is not readable JSON: {exc}", str(path)) from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path.name} is not a JSON object", str(path))
    return data


def read_model(path: str) -> ModelInfo:
    directory = Path(path)
    if not directory.is_dir():
        raise ModelDirError("the model directory does not exist", path)
    return ModelInfo(path, read_json(directory / "config.json"))
