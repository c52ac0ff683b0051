"""The kinds of text a topology holds, each validated for what it becomes later.

Names become file names, Ray resource names, Kubernetes object names and words on remote
command lines; addresses go to SSH and to the head's configuration. None may carry shell
metacharacters, spaces, newlines or path separators, so they are checked here, at load,
whatever quoting the launchers do on top.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_INTERFACE = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_USER = r"[A-Za-z_][A-Za-z0-9._-]{0,31}"
_MODEL_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?"
_OPTION = r"-{0,2}[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _matching(pattern: str, what: str):
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return check


def _address(value: str) -> str:
    """An IP address (v4 or v6) or an RFC 1123 host name (whose last label is not all digits)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    host = value.removesuffix(".")
    labels = host.split(".")
    if 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return value
    raise ValueError(f"{value!r} is not an IP address or host name (letters, digits, '-' and '.')")


def _no_control(value: str, allow: str = "") -> str:
    for char in _CONTROL.findall(value):
        if char not in allow:
            raise ValueError(f"control character U+{ord(char):04X} is not allowed")
    return value


def _path(value: str) -> str:
    if not value:
        raise ValueError("an empty path")
    return _no_control(value)


def _extra_args(value: dict[str, Any]) -> dict[str, Any]:
    """Engine options: option-like keys; string values anywhere without control characters."""
    option = _matching(_OPTION, "engine option name (letters, digits, '-', '_', '.')")

    def walk(item: Any) -> None:
        if isinstance(item, str):
            _no_control(item)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _no_control(key)
                walk(sub)
        elif isinstance(item, list):
            for sub in item:
                walk(sub)

    for key, sub in value.items():
        option(key)
        walk(sub)
    return value


def _schema(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": f"^{pattern}$"})


DnsLabel = Annotated[str, AfterValidator(_matching(
    _LABEL, "name: a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, "
    "at most 63 characters)")), _schema(_LABEL)]
Address = Annotated[str, AfterValidator(_address)]
InterfaceName = Annotated[str, AfterValidator(_matching(
    _INTERFACE, "device name (letters, digits, '_', '.', ':' and '-')")), _schema(_INTERFACE)]
UserName = Annotated[str, AfterValidator(_matching(_USER, "user name")), _schema(_USER)]
ModelId = Annotated[str, AfterValidator(_matching(
    _MODEL_ID, "model id (a built-in spec name, or a Hugging Face id: org/name)")), _schema(_MODEL_ID)]
PathText = Annotated[str, AfterValidator(_path)]
FreeText = Annotated[str, AfterValidator(lambda value: _no_control(value, allow="\n\t"))]
ExtraArgs = Annotated[dict[str, Any], AfterValidator(_extra_args)]
