"""Load topology YAML, turning every failure into one `file:line:col: field.path: message` line.

A topology file comes from a user, a generator or an attacker, so the YAML is read strictly:
UTF-8 only, no control characters, at most MAX_BYTES and MAX_DEPTH, one document, no tags
(no `!!python/object`), no anchors or aliases (no billion laughs), no complex keys, no
duplicate keys. Plain scalars resolve by YAML 1.2's core schema: `true`/`false` are booleans,
`on`/`yes`/`1_000`/`1:30` stay strings, so with the schema's strict types nothing is coerced.

The events of the libyaml parser are composed into yaml nodes here (they carry start marks);
a validation error's `loc` is walked back through the node tree to find where in the file the
offending value sits.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nemodeploy.topology.schema import Topology

PROFILE_DIR = Path(__file__).resolve().parents[2] / "topologies"

MAX_BYTES = 2 * 1024 * 1024  # a 1000-node cluster is ~200 KB
MAX_DEPTH = 16  # a topology nests 5 deep; engine.extra_args may nest a few more

_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$|^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class TopologyError(Exception):
    """A topology that cannot be used; `str()` is the one-line, located message."""

    def __init__(self, file: str, line: int, col: int, field: str, message: str):
        self.file, self.line, self.col, self.field, self.message = file, line, col, field, message
        where = f"{field}: " if field else ""
        super().__init__(_one_line(f"{file}:{line}:{col}: {where}{message}"))


def _one_line(message: str) -> str:
    """Messages quote user input; a newline or control character in it must not break the line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message.replace("\n", "\\n").replace("\r", "\\r"))


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a profile in topologies/."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if re.fullmatch(r"[a-z0-9][a-z0-9-]*", name_or_path):
        profile = PROFILE_DIR / f"{name_or_path}.yaml"
        if profile.is_file():
            return profile
    raise TopologyError(
        name_or_path, 1, 1, "", f"no such file or profile; profiles: {', '.join(profile_names())}"
    )


# -- reading: bytes -> text -> nodes -> plain data ---------------------------


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _decode(data: bytes, file: str) -> str:
    if len(data) > MAX_BYTES:
        raise TopologyError(file, 1, 1, "", f"the file is larger than {MAX_BYTES // 1024 // 1024} MiB; "
                            "a topology is a short YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start].decode("utf-8")
        line, col = _position(before, len(before))
        raise TopologyError(file, line, col, "", f"not UTF-8 (byte 0x{data[err.start]:02x}); "
                            "a topology file is UTF-8 text") from None
    text = text.removeprefix("\ufeff")
    bad = _CONTROL.search(text)
    if bad:
        line, col = _position(text, bad.start())
        raise TopologyError(file, line, col, "", f"control character U+{ord(bad.group()):04X} is not allowed")
    return text


def _refuse(file: str, event: yaml.Event, message: str) -> TopologyError:
    mark = event.start_mark
    return TopologyError(file, mark.line + 1, mark.column + 1, "", message)


def compose(text: str, file: str = "<string>") -> yaml.Node | None:
    """The document's node tree, refusing what a topology never needs (see the module docstring)."""
    stack: list[list] = []  # open collections: [node, children, pending key or None, keys seen]
    root: yaml.Node | None = None
    documents = 0
    try:
        for event in yaml.parse(text, Loader=_Parser):
            kind = type(event)
            if kind is yaml.ScalarEvent or kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.anchor is not None:
                    raise _refuse(file, event, "YAML anchors and aliases are not allowed in a topology")
                if event.tag is not None:
                    raise _refuse(file, event, f"YAML tag {event.tag!r} is not allowed in a topology")
            if kind is yaml.ScalarEvent:
                node = yaml.ScalarNode(None, event.value, event.start_mark, event.end_mark, event.style)
                node.plain = bool(event.implicit[0]) and not event.style
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if len(stack) >= MAX_DEPTH:
                    raise _refuse(file, event, f"nested deeper than {MAX_DEPTH} levels")
                collection = yaml.MappingNode if kind is yaml.MappingStartEvent else yaml.SequenceNode
                stack.append([collection(None, [], event.start_mark, event.end_mark), [], None, set()])
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                node, children, _, _ = stack.pop()
                node.value = children
                node.end_mark = event.end_mark
            elif kind is yaml.AliasEvent:
                raise _refuse(file, event, "YAML anchors and aliases are not allowed in a topology")
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _refuse(file, event, "one YAML document per topology file")
                continue
            else:
                continue
            if not stack:
                root = node
                continue
            parent = stack[-1]
            if type(parent[0]) is yaml.SequenceNode:
                parent[1].append(node)
            elif parent[2] is None:
                if type(node) is not yaml.ScalarNode:
                    raise TopologyError(file, node.start_mark.line + 1, node.start_mark.column + 1, "",
                                        "a mapping key must be a plain name, not a list or mapping")
                if node.value in parent[3]:
                    raise TopologyError(file, node.start_mark.line + 1, node.start_mark.column + 1, "",
                                        f"duplicate key {node.value!r}")
                parent[2] = node
                parent[3].add(node.value)
            else:
                parent[1].append((parent[2], node))
                parent[2] = None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise TopologyError(file, line, col, "", f"YAML syntax: {err.problem or err.context}") from None
    except yaml.YAMLError as err:  # reader errors carry no mark of their own
        raise TopologyError(file, 1, 1, "", f"YAML: {err}") from None
    return root


def _scalar(node: yaml.ScalarNode) -> Any:
    """YAML 1.2 core schema for plain scalars; quoted and block scalars are strings."""
    value = node.value
    if not node.plain:
        return value
    if _NULL.match(value):
        return None
    if value in _BOOL:
        return _BOOL[value]
    if _INT.match(value):
        return int(value, 0) if value.startswith(("0o", "0x")) else int(value)
    if _FLOAT.match(value):
        return float(value)
    if _SPECIAL_FLOAT.match(value):
        return math.nan if "nan" in value.lower() else (-math.inf if value.startswith("-") else math.inf)
    return value


def construct(node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {key.value: construct(value) for key, value in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [construct(item) for item in node.value]
    return _scalar(node)


# -- locating pydantic errors ------------------------------------------------


def _node_at(root: yaml.Node, loc: tuple) -> yaml.Node:
    """The deepest YAML node along a pydantic error location."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                return node
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _key_at(root: yaml.Node, loc: tuple) -> yaml.Node | None:
    """For an unknown field, the key node itself (the value may be far away)."""
    parent = _node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        return next((k for k, _ in parent.value if k.value == loc[-1]), None)
    return None


def _clean(loc: tuple) -> tuple:
    """Drop pydantic's validator markers from an error location."""
    return tuple(part for part in loc if not (isinstance(part, str) and part.startswith("function-")))


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@contextlib.contextmanager
def _no_gc():
    """A large file makes hundreds of thousands of objects that all stay alive: without this the
    cyclic collector rescans them again and again (a 1 MB file: 1.3 s instead of 0.35 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def loads(text: str | bytes, file: str = "<string>") -> Topology:
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    with _no_gc():
        return _validate(compose(_decode(text, file), file), file)


def _validate(root: yaml.Node | None, file: str) -> Topology:
    if root is None or not isinstance(root, yaml.MappingNode):
        raise TopologyError(file, 1, 1, "", "a topology is a YAML mapping (name, nodes, model, ...)")
    try:
        return Topology.model_validate(construct(root))
    except ValidationError as err:
        errors = [dict(e, loc=_clean(e["loc"])) for e in err.errors()]
        # a typo shows up twice: as an unknown key and as a missing one; the unknown key is the cause
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = first["loc"]
        node = (_key_at(root, loc) if first["type"] == "extra_forbidden" else None) or _node_at(root, loc)
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            missing = [e["loc"][-1] for e in errors if e["type"] == "missing" and e["loc"][:-1] == loc[:-1]]
            close = difflib.get_close_matches(str(loc[-1]), [str(m) for m in missing], n=1)
            message = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        raise TopologyError(
            file, node.start_mark.line + 1, node.start_mark.column + 1, _field_path(loc), message
        ) from None


def _read(path: Path) -> bytes:
    """At most MAX_BYTES + 1 bytes: a huge file is refused without reading it all."""
    try:
        with path.open("rb") as f:
            return f.read(MAX_BYTES + 1)
    except OSError as err:
        raise TopologyError(str(path), 1, 1, "", err.strerror or str(err)) from None


def load(name_or_path: str) -> Topology:
    path = resolve(name_or_path)
    return loads(_read(path), str(path))


def error_at(file: str, field: tuple, message: str) -> TopologyError:
    """A located error for a field of a file that loaded fine but asks for something impossible."""
    try:
        with _no_gc():
            root = compose(_decode(_read(Path(file)), file), file)
    except TopologyError:
        root = None
    node = _node_at(root, field) if root is not None else None
    line, col = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (1, 1)
    return TopologyError(file, line, col, _field_path(field), message)
