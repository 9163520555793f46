"""Strict YAML for files people edit by hand: UTF-8 only, no duplicate keys, YAML 1.1's implicit typing visible.

PyYAML (YAML 1.1) silently keeps the last of two equal keys, reads `yes/no/on/off` as booleans and an
unquoted MAC of digits (`52:54:00:12:34:56`) as a base-60 number. Here a duplicate key is an error naming
both lines, and every plain (unquoted) boolean, number or null keeps its source text and line, so a
validator that wanted a string can say "quote it" instead of using what the resolver guessed.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onedotzero.errors import UserError

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present: 4,000 nodes stay fast


@dataclass(frozen=True)
class Implicit:
    """A plain scalar that YAML 1.1 resolved to something other than a string."""

    value: Any  # what the resolver made of it: bool, int or float
    text: str  # the characters in the file
    line: int  # 1-based

    @property
    def kind(self) -> str:
        return "a boolean" if isinstance(self.value, bool) else "a number"


class _Loader(_Base):  # type: ignore[misc, valid-type]
    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, found {node.id}",
                                                    node.start_mark)
        self.flatten_mapping(node)
        seen: dict[Any, int] = {}
        mapping = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Implicit):
                raise UserError(f"line {line}: the key {key.text!r} is read by YAML as {key.kind}",
                                f"quote it: '{key.text}'")
            if not isinstance(key, str):
                raise UserError(f"line {line}: a key must be a plain name, not {type(key).__name__}")
            if key in seen:
                raise UserError(f"line {line}: duplicate key {key!r} (first at line {seen[key]})",
                                "YAML keeps only the last one: merge the two or remove one")
            seen[key] = line
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _implicit(resolved):
    def construct(loader: _Loader, node):
        value = resolved(loader, node)
        if not node.style:  # plain scalar (None in PyYAML, "" in libyaml): the resolver guessed its type
            return Implicit(value, node.value, node.start_mark.line + 1)
        return value
    return construct


for _tag, _fn in (("bool", yaml.SafeLoader.construct_yaml_bool), ("int", yaml.SafeLoader.construct_yaml_int),
                  ("float", yaml.SafeLoader.construct_yaml_float)):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _implicit(_fn))


def plain(value: Any) -> Any:
    """The data without the Implicit wrappers (for data handed on as-is, e.g. `extra:`)."""
    if isinstance(value, Implicit):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def decode(data: bytes, source: Path) -> str:
    """UTF-8 text, or one line saying what the file is instead and where."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise UserError(f"{source}: is {name} (it starts with a byte order mark), not UTF-8",
                            "save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"{source}: line {line}, column {column}: byte 0x{data[e.start]:02x} is not UTF-8 "
                        "(Latin-1 or another legacy encoding?)",
                        "save the file as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8`") from None


def load(source: Path, data: bytes | None = None) -> Any:
    """Parse a YAML file strictly; every problem is one UserError naming the file and the line."""
    if data is None:
        try:
            data = source.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {source}: {e.strerror}") from e
    text = decode(data, source)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except UserError as e:
        raise UserError(f"{source}: {e.message}", e.hint) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
