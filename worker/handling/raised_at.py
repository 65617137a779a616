"""Where a handler's exception was raised, as `file:line`, for one-line failure logs.

"ValueError: bad reading" alone does not say which line of the handler to
look at. The frame shown is the innermost one in the user's own code (not
the worker's, the standard library's or an installed package's other than
the handler's own), since a failure inside `json` is the handler's call of
it; if no such frame exists, the innermost frame of all. An exception from a
handler process carries its frames as text (pebble's `traceback` attribute,
or the `RemoteTraceback` our pool raises it from), read the same way.
"""

from __future__ import annotations

import itertools
import os
import re
import sysconfig
import traceback

import worker
from worker.handling.process_pool import RemoteTraceback

_NOT_USER_CODE = tuple(
    os.path.normcase(os.path.abspath(p)) + os.sep
    for p in {
        os.path.dirname(worker.__file__),
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["platstdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    }
)

_FRAME_LINE = re.compile(r'^  File "(.+)", line (\d+)', re.MULTILINE)


_WORKER_CODE = os.path.normcase(os.path.abspath(os.path.dirname(worker.__file__))) + os.sep
_INSTALLED = tuple(
    os.path.normcase(os.path.abspath(sysconfig.get_paths()[k])) + os.sep
    for k in ("purelib", "platlib")
)


def _path(filename: str) -> str:
    return os.path.normcase(os.path.abspath(filename))


def _is_user_code(filename: str) -> bool:
    return not filename.startswith("<") and not _path(filename).startswith(_NOT_USER_CODE)


def _handler_package(frames: list[tuple[str, int]]) -> str | None:
    """The installed package (or module) holding the handler, if it is one: a handler
    deployed with `pip install` lives in site-packages, and without this every frame of
    it was "not user code", so `at=` named the innermost frame, often the stdlib's."""
    # The last call from the worker's code out of it: in thread mode the first one is into
    # concurrent.futures, which then calls the worker's `call_sync`, which calls the handler.
    for (caller, _), (called, _) in reversed(list(itertools.pairwise(frames))):
        if _path(caller).startswith(_WORKER_CODE) and not _path(called).startswith(_WORKER_CODE):
            path = _path(called)  # the handler's own frame, called by the worker
            root = next((r for r in _INSTALLED if path.startswith(r)), None)
            if root is None:
                return None
            top = path[len(root) :].split(os.sep)[0]
            return root + top + ("" if top.endswith(".py") else os.sep)
    return None


def raised_at(error: BaseException | None) -> str:
    """`file:line` of the frame that raised `error` (relative to the working directory
    when under it), also from a handler process's traceback text; "" when none is known."""
    if error is None:
        return ""
    try:  # the handler's object: an attribute lookup that raises must not fail the partition
        remote = getattr(error, "traceback", None)  # a handler process's, as text (pebble's)
    except Exception:
        remote = None
    if not isinstance(remote, str) and isinstance(error.__cause__, RemoteTraceback):
        # Our process pool raises the child's error `from RemoteTraceback(text)`: its own
        # frames are the pool's, which would name the worker's line for every error.
        remote = str(error.__cause__)
    if isinstance(remote, str):
        frames = [(name, int(line)) for name, line in _FRAME_LINE.findall(remote)]
    else:
        frames = [(f.f_code.co_filename, n) for f, n in traceback.walk_tb(error.__traceback__)]
    if not frames:
        return ""
    package = _handler_package(frames)
    mine = [
        f for f in frames if _is_user_code(f[0]) or (package and _path(f[0]).startswith(package))
    ]
    filename, lineno = mine[-1] if mine else frames[-1]
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive
        relative = filename
    return f"{filename if relative.startswith('..') else relative}:{lineno}"
