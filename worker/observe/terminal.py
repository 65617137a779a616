"""Text from handlers and records, made safe to print on a terminal.

Error messages often quote the record that caused them, and a DLQ topic may
hold anyone's keys: printed as they are, an escape sequence in one clears or
rewrites the reader's terminal, a newline forges a line of output, and a lone
surrogate cannot be printed at all.
"""

from __future__ import annotations

import re

#: C0 and C1 controls, DEL, the bidirectional overrides that reorder what is shown, and
#: lone surrogates (a handler's `surrogateescape` text), which stdout cannot encode: `print`
#: raised UnicodeEncodeError.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with each control character written as its escape (`\\x1b`, `\\n`)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
