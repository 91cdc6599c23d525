"""The one sanitiser every surface uses: what it escapes, how, and what it keeps."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from mixprec.logs import FORMAT, VisibleFormatter
from mixprec.visible import VisibleStream, visible, visible_json

CASES = [
    ("\x1b[2K\x1b[1A", "\\x1b[2K\\x1b[1A"),       # erase line, cursor up
    ("a\rb\x08c\x7f", "a\\rb\\x08c\\x7f"),        # carriage return, backspace, DEL
    ("\x9b31m\x85", "\\x9b31m\\x85"),             # C1: CSI and NEL, which some terminals act on
    ("admin\u202egnp.exe", "admin\\u202egnp.exe"),  # bidi override
    ("x\u2028y\u200bz", "x\\u2028y\\u200bz"),       # line separator, zero-width space
    ("tag\U000e0041", "tag\\U000e0041"),           # an invisible tag character
    ("line\nnext\ttab", "line\\nnext\\ttab"),
    ("café ☕ 🙂 zoë 日本 a\\x1b", "café ☕ 🙂 zoë 日本 a\\x1b"),  # printable text and backslashes as they are
]


@pytest.mark.parametrize(("raw", "shown"), CASES)
def test_control_characters_are_shown_as_python_escapes(raw, shown):
    assert visible(raw) == shown


def test_json_keeps_the_exact_text_but_nothing_a_terminal_acts_on():
    data = {"error": "".join(raw for raw, _ in CASES), "ok": "café 🙂"}
    text = visible_json(data, indent=2)
    assert json.loads(text) == data
    assert "café 🙂" in text and all(ch.isprintable() for ch in text.replace("\n", ""))


def test_a_stream_keeps_its_own_newlines():
    out = io.StringIO()
    print("row 1\x1b[1A\nrow 2", file=VisibleStream(out))
    assert out.getvalue() == "row 1\\x1b[1A\nrow 2\n"


def test_a_log_record_is_one_line_and_a_traceback_keeps_its_lines():
    formatter = VisibleFormatter(FORMAT)
    record = logging.LogRecord("w", logging.WARNING, __file__, 1, "refused v%d: %s", (1, "x\r\nFAKE\x1b[2K"), None)
    assert formatter.format(record).endswith("refused v1: x\\r\\nFAKE\\x1b[2K")
    try:
        raise ValueError("bad\x1b[2K")
    except ValueError:
        record = logging.LogRecord("w", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "ValueError: bad\\x1b[2K"


def test_the_dashboards_json_answers_carry_escapes():
    from controlplane.web.app import VisibleJSONResponse

    body = VisibleJSONResponse({"error": "endpoint x\x1b[2K\u202e: café"}).body.decode()
    assert json.loads(body) == {"error": "endpoint x\x1b[2K\u202e: café"}
    assert "\\u001b[2K\\u202e: café" in body
