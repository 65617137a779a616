"""Where a handler's exception was raised, as `file:line`, for one-line failure logs.

"ValueError: bad reading" alone does not say which line of the handler to
look at. The frame shown is the innermost one in the user's own code (not
the worker's, the standard library's or an installed package's), since a
failure inside `json` is the handler's call of it; if no such frame exists,
the innermost frame of all.
"""

from __future__ import annotations

import os
import sysconfig
import traceback

import worker

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


def _is_user_code(filename: str) -> bool:
    path = os.path.normcase(os.path.abspath(filename))
    return not filename.startswith("<") and not path.startswith(_NOT_USER_CODE)


def raised_at(error: BaseException | None) -> str:
    """`file:line` of the frame that raised `error` (relative to the working directory
    when under it); "" when the exception carries no traceback (a process pool's)."""
    if error is None or error.__traceback__ is None:
        return ""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    frame = next((f for f in reversed(frames) if _is_user_code(f.filename)), frames[-1])
    filename = frame.filename
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive
        relative = filename
    return f"{filename if relative.startswith('..') else relative}:{frame.lineno}"
