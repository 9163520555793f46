"""Strict YAML for files people edit by hand: UTF-8 only, no duplicate keys, YAML 1.1's implicit typing visible.

PyYAML (YAML 1.1) silently keeps the last of two equal keys, reads `yes/no/on/off` as booleans, an
unquoted MAC of digits (`52:54:00:12:34:56`) as a base-60 number and `2024-01-01` as a date. Here a
duplicate key is an error naming the field and both lines, a key that is not a plain name says "quote
it", and every plain (unquoted) boolean, number or date keeps its source text and line, so a validator
that wanted a string can say "quote it" instead of using what the resolver guessed.

The document is built in one pass over libyaml's node graph (`_Loader.build`), which checks each
mapping's keys with their path (`nodes[3].ip`) as it goes: linear, and faster than PyYAML's generic
constructor for the 4,000-node inventories this must stay quick for.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import gc
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from onedotzero.errors import UserError

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present: 4,000 nodes stay fast
_TAG = "tag:yaml.org,2002:"
_STR, _MAP, _SEQ, _MERGE = _TAG + "str", _TAG + "map", _TAG + "seq", _TAG + "merge"
_DUPLICATE_HINT = "YAML keeps only the last one: merge the two or remove one"


@dataclass(frozen=True)
class Implicit:
    """A plain scalar that YAML 1.1 resolved to something other than a string."""

    value: Any  # what the resolver made of it: bool, int, float, date or datetime
    text: str  # the characters in the file
    line: int  # 1-based

    @property
    def kind(self) -> str:
        if isinstance(self.value, bool):
            return "a boolean"
        return "a date" if isinstance(self.value, (datetime.date, datetime.datetime)) else "a number"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class _Loader(_Base):  # type: ignore[misc, valid-type]
    def build(self, node: Any, where: str = "") -> Any:
        """The Python data of node; where is its path in the document (`nodes[3]`), for messages."""
        cls = node.__class__
        if cls is ScalarNode:
            return node.value if node.tag == _STR else self.construct_object(node, deep=True)
        done = self.constructed_objects.get(node)  # an alias of a node built already
        if done is not None:
            return done
        if cls is SequenceNode and node.tag == _SEQ:
            out: Any = []
            self.constructed_objects[node] = out
            out.extend(self.build(child, f"{where}[{i}]") for i, child in enumerate(node.value))
            return out
        if cls is MappingNode and node.tag == _MAP:
            return self._build_mapping(node, where)
        return self.construct_object(node, deep=True)  # an explicit tag (!!set, !!binary, ...): PyYAML's way

    def _build_mapping(self, node: MappingNode, where: str) -> dict:
        out: dict = {}
        self.constructed_objects[node] = out
        lines: dict[str, int] = {}
        has_merge = False
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                has_merge = True
                continue
            key = self._key(key_node, where)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise UserError(f"line {line}: duplicate key {_join(where, key)} (first at line {lines[key]})",
                                _DUPLICATE_HINT)
            lines[key] = line
            out[key] = self.build(value_node, _join(where, key))
        if has_merge:  # `<<: *anchor`: PyYAML flattens the merged pairs in front of the own ones, which win
            self.flatten_mapping(node)
            merged: dict = {}
            for key_node, value_node in node.value[:len(node.value) - len(lines)]:
                merged[self.build(key_node, where)] = self.build(value_node, where)
            for key, value in merged.items():
                out.setdefault(key, value)
        return out

    def _key(self, key_node: Any, where: str) -> str:
        if key_node.__class__ is ScalarNode and key_node.tag == _STR:
            return key_node.value
        line = key_node.start_mark.line + 1
        if key_node.__class__ is not ScalarNode:
            raise UserError(f"line {line}: {where or 'the top level'}: a key is a {key_node.id}, not a name",
                            "write `name: value`")
        key = self.build(key_node, where)
        if isinstance(key, Implicit):
            raise UserError(f"line {line}: {_join(where, key.text)}: the key {key.text!r} is read by YAML as "
                            f"{key.kind}", f"quote it: '{key.text}'")
        if key is None:
            raise UserError(f"line {line}: {where or 'the top level'}: a key is empty",
                            "write the field's name before ':'")
        raise UserError(f"line {line}: {where or 'the top level'}: the key {key_node.value!r} is tagged "
                        f"{key_node.tag}, not a name", "write the key as plain text, without a tag")

    def construct_mapping(self, node, deep=False):
        """Mappings under an explicit tag (PyYAML's path): still no duplicate keys."""
        if not isinstance(node, MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, found {node.id}",
                                                    node.start_mark)
        self.flatten_mapping(node)
        mapping = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Implicit):
                key = key.value
            if not isinstance(key, Hashable):
                raise UserError(f"line {key_node.start_mark.line + 1}: a key is a {key_node.id}, not a name",
                                "write `name: value`")
            if key in mapping:
                raise UserError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}", _DUPLICATE_HINT)
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
                  ("float", yaml.SafeLoader.construct_yaml_float),
                  ("timestamp", yaml.SafeLoader.construct_yaml_timestamp)):
    _Loader.add_constructor(_TAG + _tag, _implicit(_fn))


@contextlib.contextmanager
def paused_gc():
    """No cyclic garbage collection for the block: for building many objects that form no cycles.

    Each full collection walks the whole heap, and a heap growing by a YAML node graph gets several: 4,000
    inventory nodes took 0.8 s instead of 0.3 s, superlinearly. Reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def plain(value: Any) -> Any:
    """The data without the Implicit wrappers (for data handed on as-is, e.g. `extra:`)."""
    if isinstance(value, Implicit):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _where(data: bytes | str, offset: int) -> str:
    """'line L, column C' (1-based) of an offset into data."""
    nl = b"\n" if isinstance(data, bytes) else "\n"
    return f"line {data.count(nl, 0, offset) + 1}, column {offset - (data.rfind(nl, 0, offset) + 1) + 1}"


def decode(data: bytes, source: Path) -> str:
    """UTF-8 text, or one line saying what the file is instead and where."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise UserError(f"{source}: is {name} (it starts with a byte order mark), not UTF-8",
                            f"save it as UTF-8, e.g. `iconv -f {name} -t UTF-8`")
    if (nul := data.find(b"\0")) >= 0:
        utf16 = next((name for name, half in (("UTF-16LE", data[1::2]), ("UTF-16BE", data[0::2]))
                      if 2 * half.count(0) > len(half)), None)  # ASCII text in UTF-16: every other byte is 0
        if utf16:
            raise UserError(f"{source}: is {utf16} without a byte order mark, not UTF-8",
                            f"save it as UTF-8, e.g. `iconv -f {utf16} -t UTF-8`")
        raise UserError(f"{source}: {_where(data, nul)}: a NUL byte: this is not a text file",
                        "give the path of the YAML file")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: {_where(data, e.start)}: byte 0x{data[e.start]:02x} is not UTF-8: the file is "
                        "Latin-1 or another legacy encoding",
                        "save the file as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8`") from None


_HINTS = (  # problem fragment -> how to fix it
    ("another document", "one document per file: remove the second `---`"),
    ("undefined alias", "define `&name` before `*name`, or quote a value that starts with '*'"),
    ("constructor for the tag", "quote a value that starts with '!'"),
)


def _syntax_error(e: yaml.YAMLError, text: str, source: Path) -> UserError:
    """One line for a YAML error (PyYAML's own text spans several)."""
    if isinstance(e, yaml.reader.ReaderError):
        return UserError(f"{source}: {_where(text, e.position)}: character U+{e.character:04X} is not allowed in "
                         "YAML (a control character)", "delete it, or write it as an escape in a quoted string")
    mark = getattr(e, "problem_mark", None)
    problem = " ".join(str(getattr(e, "problem", None) or e).split())
    if problem.startswith("but ") and getattr(e, "context", None):
        problem = f"{e.context}, {problem}"  # "expected a single document in the stream, but found another ..."
    hint = next((h for fragment, h in _HINTS if fragment in problem), "check the indentation and the quoting there")
    if mark is None:
        return UserError(f"{source}: not valid YAML: {problem}", hint)
    line = text.split("\n", mark.line + 1)[mark.line] if mark.line <= text.count("\n") else ""
    if "\t" in line[:mark.column + 1]:
        hint = "indent with spaces: YAML does not allow tabs"
    return UserError(f"{source}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}", hint)


def load(source: Path, data: bytes | None = None) -> Any:
    """Parse a YAML file strictly; every problem is one UserError naming the file and the line."""
    if data is None:
        try:
            data = source.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {source}: {e.strerror}", "check the path and its permissions") from None
    text = decode(data, source)
    try:
        with paused_gc():
            return _parse(text)  # its node graph is freed on return: before the collector runs again
    except UserError as e:
        raise UserError(f"{source}: {e.message}", e.hint) from None
    except yaml.YAMLError as e:
        raise _syntax_error(e, text, source) from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be an inventory or profile",
                        "check for a runaway `[` or `{`") from None


def _parse(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else loader.build(node)
    finally:
        loader.dispose()
