"""The grammar of adapter names a client may ask for: ``owner/name[@ref]``.

Owners, names and aliases follow Quiver's own rule (``[a-z0-9][a-z0-9._-]{0,95}``, compared in
lower case). A ref is ``main``, ``vN`` or ``N`` (a version number), a 40-hex revision, or an
alias. Anything else is not a Quiver name, so the resolver returns None and lets other resolvers
try it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

MAX_NAME_LEN = 96
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,95}\Z")
_NUMBER = re.compile(r"v?[0-9]{1,18}\Z")
_REVISION = re.compile(r"[0-9a-f]{40}\Z")


class NameError_(ValueError):
    """A lora name that is not ``owner/name[@ref]``."""


@dataclass(frozen=True)
class AdapterRef:
    owner: str
    name: str
    ref: str

    @property
    def adapter(self) -> str:
        return f"{self.owner}/{self.name}"

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}@{self.ref}"

    @property
    def is_revision(self) -> bool:
        return bool(_REVISION.match(self.ref))


def valid_name(s: str) -> bool:
    return bool(_NAME.match(s.lower()))


def valid_ref(s: str) -> bool:
    """``main``, ``vN``/``N``, 40-hex (lower case), or an alias name."""
    if s == "main" or _NUMBER.match(s) or _REVISION.match(s):
        return True
    return valid_name(s)


def parse(lora_name: str, default_ref: str = "main") -> AdapterRef:
    """Parse ``owner/name[@ref]``; raise :class:`NameError_` saying why it is not one."""
    if not isinstance(lora_name, str) or not lora_name:
        raise NameError_("empty name")
    if len(lora_name) > 2 * MAX_NAME_LEN + 2 + 100:
        raise NameError_("name too long")
    body, at, ref = lora_name.partition("@")
    if at and not ref:
        raise NameError_("empty ref after '@'")
    if "@" in ref:
        raise NameError_("more than one '@'")
    parts = body.split("/")
    if len(parts) != 2:
        raise NameError_("not owner/name")
    owner, name = parts
    if not valid_name(owner):
        raise NameError_(f"owner {owner!r} is not a Quiver name")
    if not valid_name(name):
        raise NameError_(f"adapter name {name!r} is not a Quiver name")
    ref = ref if at else default_ref
    if not valid_ref(ref):
        raise NameError_(f"ref {ref!r} is not main, vN, a number, a 40-hex revision or an alias")
    return AdapterRef(owner.lower(), name.lower(), ref.lower() if not _REVISION.match(ref) else ref)


def try_parse(lora_name: str, default_ref: str = "main") -> Optional[AdapterRef]:
    try:
        return parse(lora_name, default_ref)
    except NameError_:
        return None
