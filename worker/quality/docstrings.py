"""A retrieval set built from text that ships with Python: standard-library docstrings.

Each pair is (the first paragraph of a docstring, the rest of it): the query should retrieve its own
document among all the others. Deterministic for a given Python version: modules, members and pairs
are taken in sorted order.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

from mixprec.errors import FieldError, InvalidArgument

MODULES = (
    "argparse", "ast", "asyncio.base_events", "asyncio.locks", "asyncio.queues", "asyncio.streams",
    "asyncio.tasks", "base64", "bisect", "calendar", "codecs", "collections", "concurrent.futures._base",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis",
    "email.message", "email.utils", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "http.cookiejar",
    "http.server", "imaplib", "inspect", "io", "ipaddress", "json", "json.decoder", "json.encoder", "locale",
    "logging", "logging.handlers", "mailbox", "mimetypes", "nntplib", "ntpath", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath",
    "pprint", "pydoc", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "subprocess", "sysconfig",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types",
    "typing", "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
)
MAX_DOC_CHARS = 700


@dataclass(frozen=True)
class Pair:
    """A query and its document (embedders), or one text in `query` with no document (a decoder's data file)."""

    source: str  # e.g. "json.dumps", or "line 3" of a user's data file
    query: str
    document: str
    label: float | None = None  # a user's label for the pair (ranking, log-loss); None: unlabelled

    @property
    def text(self) -> str:
        """What a decoder reads of it."""
        return f"{self.query}\n{self.document}" if self.document else self.query


def _paragraphs(doc: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc) if p.strip()]


def _members(module) -> list[tuple[str, object]]:
    found = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            found.append((f"{module.__name__}.{name}", obj))
            if inspect.isclass(obj):
                for method_name, method in sorted(vars(obj).items()):
                    if not method_name.startswith("_") and inspect.isfunction(method):
                        found.append((f"{module.__name__}.{name}.{method_name}", method))
    return found


@lru_cache(maxsize=1)
def build_pairs() -> tuple[Pair, ...]:
    pairs, seen = [], set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for source, obj in _members(module):
                doc = obj.__doc__
                if not isinstance(doc, str):
                    continue
                paragraphs = _paragraphs(inspect.cleandoc(doc))
                if len(paragraphs) < 2:
                    continue
                query, document = paragraphs[0], " ".join(paragraphs[1:])[:MAX_DOC_CHARS]
                if len(query.split()) < 4 or len(document.split()) < 12 or query in seen or document in seen:
                    continue
                seen.update((query, document))
                pairs.append(Pair(source, query, document))
    return tuple(pairs)


def load_pairs(samples: int | None = None) -> tuple[Pair, ...]:
    """The first `samples` pairs in a fixed spread over all modules (every k-th pair), or all of them."""
    pairs = build_pairs()
    if not samples or samples >= len(pairs):
        return pairs
    if samples < 1:
        raise InvalidArgument(FieldError("samples", f"must be >= 1, got {samples}"))
    step = len(pairs) / samples
    return tuple(pairs[int(i * step)] for i in range(samples))
