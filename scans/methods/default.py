"""Default: the model as it is, no intervention."""

from __future__ import annotations

from dataclasses import dataclass

from scans.methods.base import Method


@dataclass(frozen=True)
class Default(Method):
    name: str = "Default"
