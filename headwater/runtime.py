"""Runtime selection: run an anyio main on asyncio with uvloop (the default) or on trio."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import anyio

__all__ = ["BACKENDS", "run", "backend_options"]

BACKENDS = ("asyncio", "trio")


def backend_options(backend: str) -> dict[str, Any]:
    """The anyio backend options Headwater uses for ``backend``."""
    if backend == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
            return {}
        return {"use_uvloop": True}
    if backend == "trio":
        return {}
    raise ValueError(f"unknown runtime {backend!r} (known: {', '.join(BACKENDS)})")


def run(main: Callable[..., Awaitable[Any]], *args: Any, backend: str = "asyncio") -> Any:
    """Run ``main(*args)`` to completion on ``backend`` ("asyncio" on uvloop, or "trio")."""
    return anyio.run(main, *args, backend=backend, backend_options=backend_options(backend))
