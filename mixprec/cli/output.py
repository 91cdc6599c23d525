"""Output for people (aligned tables) and for scripts (JSON).

Names, reasons, NACK errors and worker ids come from other people and from agents: every cell is one
line with its control characters shown as escapes (mixprec.visible), JSON carries them as \\u escapes,
and main() writes everything else through visible_streams(), so nothing printed can move the cursor,
rewrite a line or change the terminal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mixprec.visible import VisibleStream, visible, visible_json


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, file=None) -> None:
    out = file or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)


def as_json(obj: Any, file=None) -> None:
    print(visible_json(obj, indent=2, sort_keys=False, default=str), file=file or sys.stdout)


def emit(args, obj: Any, rows: Sequence[Mapping[str, Any]] | None = None, columns: Sequence[str] | None = None) -> None:
    """JSON of `obj` with --output json; otherwise a table of `rows` (defaults to obj)."""
    if getattr(args, "output", "table") == "json":
        as_json(obj)
    else:
        table(rows if rows is not None else obj, columns)


def key_values(pairs: Sequence[tuple[str, Any]], file=None) -> None:
    out = file or sys.stdout
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key + ':':<{width + 1}} {_cell(value)}", file=out)


def _cell(value: Any) -> str:
    """One line of printable text: a newline in a value cannot start a row of its own."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return visible(",".join(str(v) for v in value))
    return visible(str(value))


@contextlib.contextmanager
def visible_streams() -> Iterator[None]:
    """stdout and stderr with control characters shown as escapes (newlines pass), for one command."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = VisibleStream(sys.stdout), VisibleStream(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a reader that left (BrokenPipe) is main()'s to handle
                stream.flush()
        sys.stdout, sys.stderr = saved
