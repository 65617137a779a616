"""Loading the user's handler, and telling how it must be called.

A leaf: the CLI, the invoker, handler processes and `worker invoke` all load
handlers the same way, so an import error reads the same everywhere.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any


class HandlerLoadError(Exception):
    """The handler target cannot be imported or is not callable."""


def load_handler(target: str) -> Callable[..., Any]:
    """Import `module:function`, with the working directory first on sys.path."""
    module_name, _, attr = target.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerLoadError(
            f"handler.target {target!r}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise HandlerLoadError(f"handler.target {target!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise HandlerLoadError(f"handler.target {target!r}: {attr!r} is not callable")
    return fn


def is_coroutine_callable(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions and for objects whose `__call__` is one."""
    call = getattr(type(fn), "__call__", None)  # noqa: B004 (the method, not callability)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def materialise(result: Any) -> Any:
    """A returned iterator (a generator, `map`, ...) read to a list, where the handler runs.

    Reading it runs handler code: an error it raises is the handler's error (its
    invocation failed), and a slow one is bounded by the handler's timeout, not run
    later on the event loop by whoever reads the response.
    """
    if isinstance(result, Iterator) and not isinstance(result, str | bytes | dict):
        return list(result)
    return result


def not_awaitable(result: Any, fix: str) -> Any:
    """`result`, unless it is an awaitable: that is the handler's work not done yet (a
    plain function returning a coroutine, an `async def` one missing an `await`), and
    counting it as a result would commit records nobody handled. A coroutine is closed
    (no "never awaited" warning later) and the invocation fails, saying `fix`."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError(f"the handler returned an awaitable instead of its result; {fix}")
    return result


def call_sync(fn: Callable[..., Any], *args: Any) -> Any:
    result = not_awaitable(fn(*args), "declare it `async def`")
    return materialise(result)
