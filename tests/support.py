"""Paths the tests share."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path("tests/fixtures")  # relative to REPO (tests run there), so plans match on any clone
MODELS = FIXTURES / "models"
ADAPTERS = FIXTURES / "adapters"


def model(name: str) -> str:
    return str(MODELS / name)


def adapter(name: str) -> str:
    return str(ADAPTERS / name)
