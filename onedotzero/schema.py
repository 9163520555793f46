"""Reading one mapping of a hand-edited YAML file: known keys only, typed values, one-line errors.

Errors read `<file>: <section>.<field>: <what is wrong> (<how to fix it>)`. Plain scalars that YAML 1.1
typed behind the author's back (see yamlfile.Implicit) are refused where a string is wanted: "quote it".
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, NoReturn

from onedotzero.errors import UserError
from onedotzero.yamlfile import Implicit

MISSING: Any = object()


class Fields:
    def __init__(self, source: Path, where: str, data: Any, known: set[str] | frozenset[str],
                 example: str = "cluster.example.yml"):
        self.source, self.where, self.example = source, where, example
        if isinstance(data, Implicit) or not isinstance(data, dict):
            shown = repr(data.text) if isinstance(data, Implicit) else _article(type(data))
            self.fail(f"must be a mapping, got {shown}", _example(dict))
        if not (known if isinstance(known, (set, frozenset)) else frozenset(known)).issuperset(data):
            unknown = sorted(map(str, data.keys() - known))
            self.fail(f"unknown field {unknown[0]!r}", f"known fields: {', '.join(sorted(known))}")
        self.data = data

    def name(self, key: str | None = None) -> str:
        if key is None:
            return self.where
        return f"{self.where}.{key}" if self.where else key

    def fail(self, message: str, hint: str | None = None, key: str | None = None) -> NoReturn:
        where = self.name(key)
        raise UserError(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}", hint)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = MISSING, kind: type = str) -> Any:
        """The value of key as kind; default when absent (or null); a missing required key is an error."""
        if self.data.get(key) is None:
            if default is MISSING:
                self.fail("is missing", f"add it (see {self.example})", key)
            return default
        return self.typed(self.data[key], kind, key)

    def typed(self, value: Any, kind: type, key: str) -> Any:
        if type(value) is kind:  # the common case, first: thousands of nodes' fields
            return value
        if isinstance(value, Implicit):
            if kind is bool and isinstance(value.value, bool):
                return value.value
            if kind is int and type(value.value) is int or kind is float and type(value.value) in (int, float):
                return kind(value.value)
            if kind is str:
                self.fail(f"{value.text} is read by YAML as {value.kind}", f"quote it: '{value.text}'", key)
            self.fail(f"{value.text} must be {_article(kind)}", _example(kind), key)
        if not isinstance(value, kind):
            if not isinstance(value, str):
                self.fail(f"is {_article(type(value))}, not {_article(kind)}", _example(kind), key)
            hint = "write it without quotes" if _reads_as(value, kind) else _example(kind)
            self.fail(f"{value!r} must be {_article(kind)}", hint, key)
        return value

    def strings(self, key: str, default: Any = MISSING) -> list[str]:
        """A list of strings (each checked like a string field)."""
        values = self.get(key, default, list)
        if all(type(v) is str for v in values):
            return list(values)
        return [self.typed(v, str, f"{key}[{i}]") for i, v in enumerate(values)]

    def mapping(self, key: str, known: set[str] | frozenset[str], default: Any = MISSING) -> Fields | None:
        if self.data.get(key) is None and default is not MISSING:
            return default
        return Fields(self.source, self.name(key), self.get(key, kind=dict), known, self.example)

    def ip(self, key: str, value: Any = MISSING) -> ipaddress.IPv4Address:
        value = self.get(key) if value is MISSING else self.typed(value, str, key)
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 address", "write it like 192.168.1.10", key)

    def network(self, key: str, value: Any = MISSING) -> ipaddress.IPv4Network:
        value = self.get(key) if value is MISSING else self.typed(value, str, key)
        try:
            return ipaddress.IPv4Network(value, strict=True)
        except ValueError:
            self.fail(f"{value!r} is not a network", "write it like 192.168.1.0/24 (host bits zero)", key)

    def choice(self, key: str, choices: tuple[str, ...] | list[str], default: Any = MISSING) -> str:
        value = self.get(key, default)
        if value not in choices:
            self.fail(f"{value!r} is not a known value", f"choose one of: {', '.join(choices)}", key)
        return value


def _article(kind: type) -> str:
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list",
            dict: "a mapping", type(None): "empty"}.get(kind, f"a {kind.__name__}")


def _example(kind: type) -> str:
    return {str: "write it in quotes", int: "e.g. 65520", float: "e.g. 1.5", bool: "true or false",
            list: "e.g. [a, b] or one `- item` per line", dict: "e.g. {key: value} or one `key: value` per line"
            }.get(kind, f"see {kind.__name__}")


def _reads_as(text: str, kind: type) -> bool:
    """Whether a quoted value would be of kind without its quotes ("65520" for an int)."""
    if kind is bool:
        return text.lower() in ("true", "false")
    if kind not in (int, float):
        return False
    try:
        kind(text)
    except ValueError:
        return False
    return True
