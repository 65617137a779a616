"""The one error a start-up failure becomes: a line for the operator, exit status 1.

Anything the worker cannot start with (a source it cannot reach, a port in use, an
on-failure destination it cannot connect to) is raised as a `StartError` whose
message names what and where; the CLI prints it as one `error:` line, never a
traceback.
"""

from __future__ import annotations


class StartError(Exception):
    """The worker cannot start; the message says what and where, in one line."""
