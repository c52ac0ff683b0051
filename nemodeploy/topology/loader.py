"""Load topology YAML, turning every failure into one `file:line:col: field.path: message` line.

YAML is composed into nodes first (they carry start marks), then constructed to
plain data for pydantic; a validation error's `loc` is walked back through the
node tree to find where in the file the offending value sits.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import ValidationError

from nemodeploy.topology.schema import Topology

PROFILE_DIR = Path(__file__).resolve().parents[2] / "topologies"


class TopologyError(Exception):
    """A topology that cannot be used; `str()` is the one-line, located message."""

    def __init__(self, file: str, line: int, col: int, field: str, message: str):
        self.file, self.line, self.col, self.field, self.message = file, line, col, field, message
        where = f"{field}: " if field else ""
        super().__init__(f"{file}:{line}:{col}: {where}{message}")


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a profile in topologies/."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    profile = PROFILE_DIR / f"{name_or_path}.yaml"
    if profile.is_file():
        return profile
    raise TopologyError(
        name_or_path, 1, 1, "", f"no such file or profile; profiles: {', '.join(profile_names())}"
    )


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


def loads(text: str, file: str = "<string>") -> Topology:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise TopologyError(file, line, col, "", f"YAML syntax: {err.problem or err.context}") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise TopologyError(file, 1, 1, "", "a topology is a YAML mapping (name, nodes, model, ...)")
    data = yaml.SafeLoader(text).get_single_data()
    try:
        return Topology.model_validate(data)
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


def load(name_or_path: str) -> Topology:
    path = resolve(name_or_path)
    try:
        text = path.read_text()
    except OSError as err:
        raise TopologyError(str(path), 1, 1, "", err.strerror or str(err)) from None
    return loads(text, str(path))


def error_at(file: str, field: tuple, message: str) -> TopologyError:
    """A located error for a field of a file that loaded fine but asks for something impossible."""
    try:
        root = yaml.compose(Path(file).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        root = None
    node = _node_at(root, field) if root is not None else None
    line, col = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (1, 1)
    return TopologyError(file, line, col, _field_path(field), message)
