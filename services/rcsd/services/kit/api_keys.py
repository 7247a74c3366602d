"""The API keys a service accepts, each with a name: one trainer (or team) per key.

Keys come from up to three places, all read once at startup:
- `api_key` (`RCSD_<SERVICE>_API_KEY`): one key, named `default`;
- `api_keys_file` (`RCSD_<SERVICE>_API_KEYS_FILE`): a file of `name:key` lines (`#` comments and blank
  lines skipped), for a secret mounted as a file;
- `api_keys` (`RCSD_<SERVICE>_API_KEYS`): `name:key` pairs separated by commas.
The name labels the key's metrics, logs and fair share of the admission queue; the key itself is
never logged, counted or echoed. No key anywhere: the service is open, and every caller is `anonymous`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ANONYMOUS = "anonymous"  # the name of every caller of a service without keys
DEFAULT_KEY_NAME = "default"  # the name of `api_key`
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_KEY_CHARS = 8


@dataclass(frozen=True)
class NamedKey:
    name: str
    secret: str = field(repr=False)


class ApiKeyError(ValueError):
    """A key list that cannot be used; the message names the place, never the key."""


def parse_named_keys(text: str, source: str, separator: str = "\n") -> list[NamedKey]:
    """`name:key` entries of `text`, split on `separator`; `source` names where they came from."""
    keys = []
    for number, raw in enumerate(text.split(separator), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, colon, secret = entry.partition(":")
        name, secret = name.strip(), secret.strip()
        if not colon or not _NAME.match(name):
            raise ApiKeyError(f"{source} entry {number}: expected `name:key`, name of [A-Za-z0-9_.-]{{1,64}}")
        if len(secret) < MIN_KEY_CHARS:
            raise ApiKeyError(
                f"{source} entry {number} ({name}): the key is shorter than {MIN_KEY_CHARS} chars"
            )
        keys.append(NamedKey(name, secret))
    return keys


def collect_keys(single: str | None, keys_file: Path | None, keys_env: str | None) -> list[NamedKey]:
    """Every accepted key, checked: names and keys unique (two names for one key would blur whose it is)."""
    keys = [NamedKey(DEFAULT_KEY_NAME, single)] if single else []
    if keys_file is not None:
        try:
            text = keys_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ApiKeyError(f"api_keys_file {keys_file}: {exc.strerror or exc}") from None
        keys += parse_named_keys(text, f"api_keys_file {keys_file}")
    if keys_env:
        keys += parse_named_keys(keys_env, "api_keys", separator=",")
    names = [key.name for key in keys]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise ApiKeyError(f"API key names used twice: {', '.join(duplicated)}")
    if len({key.secret for key in keys}) < len(keys):
        raise ApiKeyError("one API key is given under two names: give each trainer its own key")
    return keys
