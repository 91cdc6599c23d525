"""Parsing YAML and JSON that someone else wrote, with bounds on size, depth and aliases.

PyYAML's safe loader composes recursively (a document nested 100,000 deep raises RecursionError) and
expands aliases into shared objects whose repr or traversal grows exponentially (a 492-byte "billion
laughs" took 42 s and 2.2 GB). Every YAML document mixprec reads goes through load_yaml, which
refuses, naming the bound, before any of that can happen.
"""

from __future__ import annotations

import reprlib

import yaml

from mixprec.errors import FieldError, InvalidArgument

MAX_YAML_CHARS = 1_000_000   # a policy is a few rules; the policy file limit is the same
MAX_YAML_DEPTH = 32          # as artifact_json's
MAX_YAML_ALIASES = 16        # a policy needs none; a few are harmless
MAX_YAML_NODES = 100_000     # nodes once every alias is expanded (a 1,000-rule policy has ~3,000)


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 3, 4, 4, 60, 40, 60


def short_repr(value: object) -> str:
    """A repr of a parsed value for an error message: bounded, however large the value is or however
    many times aliases share its parts."""
    return _SHORT.repr(value)


class _Refused(Exception):
    def __init__(self, problem: str):
        self.problem = problem


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts depth, aliases and expanded nodes as it builds the tree."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._expanded: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _Refused(f"uses more aliases (*name) than the limit of {MAX_YAML_ALIASES}")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _Refused(f"nests deeper than the limit of {MAX_YAML_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._expanded[id(node)] = size = 1 + sum(self._expanded.get(id(child), 1) for child in _children(node))
        if size > MAX_YAML_NODES:
            raise _Refused(f"expands to more nodes than the limit of {MAX_YAML_NODES} once its aliases are "
                           "expanded")
        return node


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def load_yaml(text: str, source: str) -> object:
    """The document in `text` (None if empty); InvalidArgument naming `source` and the problem."""
    if len(text) > MAX_YAML_CHARS:
        raise InvalidArgument(FieldError(source, f"is {len(text)} characters long; the limit is {MAX_YAML_CHARS}"))
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as refused:
        raise InvalidArgument(FieldError(source, refused.problem)) from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(FieldError(source, f"is not valid YAML: {exc}")) from None
    finally:
        loader.dispose()


def json_depth(text: str) -> int:
    """Deepest nesting of [ and { in a JSON text, found without parsing it (no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest
