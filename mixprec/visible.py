"""Text from operators and agents made safe to show: control characters become visible escapes.

Any caller may put terminal escape sequences (ESC, CSI, OSC), carriage returns, backspaces, bidi
overrides or line separators into a reason, a NACK error or a worker id; printed raw they rewrite or
hide lines on an operator's terminal, in a log viewer or on the dashboard. Every surface that shows
such text (CLI tables, JSON and streams, the server's and worker's logs, the dashboard's templates
and JSON) goes through this module. Printable Unicode stays as it is; anything `str.isprintable()`
rejects (Unicode categories C* and Z* but the plain space: C0/C1 controls, DEL, format characters
such as U+202E, line and paragraph separators, unassigned code points) is written the way Python
writes it in a string literal: `\\x1b`, `\\n`, `\\u202e`, `\\U000e0001`. Backslashes are left alone.
"""

from __future__ import annotations

import io
import json
from typing import Any

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str, keep: str = "") -> str:
    """`text` with every non-printable character but those in `keep` replaced by its visible escape."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(ch if ch.isprintable() or ch in keep else _escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def visible_json(obj: Any, **dumps_options) -> str:
    """JSON of `obj` with printable Unicode as is and every other character as a \\u escape: the same
    data for any JSON reader, nothing a terminal acts on. (They can only occur inside strings, where a
    \\u escape means the same character.)"""
    text = json.dumps(obj, ensure_ascii=False, **dumps_options)
    if text.replace("\n", " ").isprintable():  # indentation's newlines are the only ones left raw
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else _json_escape(ch) for ch in text)


class VisibleStream(io.TextIOBase):
    """A text stream that writes through to `target` with control characters made visible; newlines
    pass (they are the output's own structure; a cell or a log record escapes its own before)."""

    def __init__(self, target):
        self.target = target

    def write(self, text: str) -> int:
        self.target.write(visible(text, keep="\n"))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()

    def isatty(self) -> bool:
        return self.target.isatty()

    @property
    def encoding(self):
        return getattr(self.target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


def unfiltered(stream):
    """The stream under a VisibleStream: for the program's own terminal drawing (progress bars redraw
    their line with a carriage return), never for text that came from someone else."""
    return getattr(stream, "target", stream) if isinstance(stream, VisibleStream) else stream
