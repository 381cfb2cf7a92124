"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package that re-exports its modules' names makes every ``import pkg.small_module`` pay for
all of them: importing ``headwater.http.errors`` used to import the whole HTTP server, h2 and
anyio with it. Every ``headwater`` command (and so every daemon start) reads the whole
cluster.toml through every package's config reader, so those chains cost each process a second
of CPU. With :func:`lazy_exports` a package keeps its public names but imports a module only
when one of its names is first used.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps each exported name to the
    submodule (relative, e.g. ``".server"``) that defines it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # next time, a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(names) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__
