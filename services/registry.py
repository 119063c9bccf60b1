"""The five services by slug: settings class and builder."""

from __future__ import annotations

import importlib

SERVICES = ("questiongen", "filter", "solver", "reward", "coordinator")
# Services that load a model (share one engine per model in an embedded process).
ENGINE_SERVICES = ("questiongen", "filter", "solver", "reward")


def service_module(name: str):
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}")
    return importlib.import_module(f"services.{name}.main")
