"""Where a handler's exception was raised, as `file:line`, for one-line failure logs.

"ValueError: bad reading" alone does not say which line of the handler to
look at. The frame shown is the innermost one in the user's own code (not
the worker's, the standard library's or an installed package's), since a
failure inside `json` is the handler's call of it; if no such frame exists,
the innermost frame of all. An exception from a handler process carries its
frames as text (pebble's `traceback` attribute, or the `RemoteTraceback` our
pool raises it from), read the same way.
"""

from __future__ import annotations

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


def _is_user_code(filename: str) -> bool:
    path = os.path.normcase(os.path.abspath(filename))
    return not filename.startswith("<") and not path.startswith(_NOT_USER_CODE)


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
    filename, lineno = next((f for f in reversed(frames) if _is_user_code(f[0])), frames[-1])
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive
        relative = filename
    return f"{filename if relative.startswith('..') else relative}:{lineno}"
