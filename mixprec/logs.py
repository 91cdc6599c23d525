"""Log records for the server's and the worker's stderr: one record per line, nothing a terminal acts on.

A record's message carries what callers sent (a NACK error, a worker id, a reason): its control
characters, newlines included, are written as visible escapes (mixprec.visible), so no caller can
forge a log line or hide one. Tracebacks keep their own newlines.
"""

from __future__ import annotations

import logging
import sys

from mixprec.visible import visible

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class VisibleFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return visible(super().formatException(ei), keep="\n")

    def formatStack(self, stack_info: str) -> str:
        return visible(super().formatStack(stack_info), keep="\n")


def configure_logging(level: str, stream=None) -> None:
    """The process's log handler: records at `level` and above to `stream` (default stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(VisibleFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
