"""Masking of every credential form, used by every output path (errors, consoles, run log, alerts).

Two nets: patterns for credentials as they are written (URL passwords, secret query parameters,
libpq `key=value`, quoted `'password': ...`, `Authorization`/Bearer/Basic values), and a
process-wide registry of the secret values the config interpolated, so that even a driver message
that echoes a raw secret is masked. When in doubt it masks more, never less.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import quote, unquote

MASK = "***"
# Shorter values would mask ordinary words and numbers everywhere; they are no secret anyway.
MIN_SECRET_LENGTH = 4

# Names whose value is a credential, wherever they appear (query, DSN, JSON, YAML keys).
_SECRET_NAMES = (
    "password|passwd|pwd|pass|token|access_token|refresh_token|id_token|api_key|apikey|key"
    "|secret|client_secret|signature|sig|auth|private_key|access_key|secret_key"
)
# Bounded on both sides: an unbounded run around the word backtracks quadratically on a long name.
_SECRET_NAME_WORDS = (
    r"[a-z0-9_.\-]{0,64}?(?:password|passwd|pwd|token|secret|api_?key|access_?key|signature)"
    r"[a-z0-9_.\-]{0,64}"
)
# `?password=...`, `&motherduck_token=...` (also `;`-separated and with an encoded name).
# Trailing punctuation (`...?password=x): error`) belongs to the text around the URL: the value
# runs greedily to its end and `_param_value` gives the punctuation back (a lazy value with a
# look-ahead over the punctuation would be quadratic on a long run of dots).
_QUERY_PARAM = re.compile(rf"(?i)([?&;](?:{_SECRET_NAMES}|{_SECRET_NAME_WORDS})=)([^&;#\s'\"<>]*)")
_TRAILING_PUNCTUATION = ")]},.:"
# libpq DSNs, driver messages and SQL text: `password=secret`, `password = 'se cret'`, and a
# prefixed name such as `DB_PASSWORD=secret` (the prefix is bounded to keep the scan linear).
_ASSIGNMENT = re.compile(
    r"(?i)(?<![?&;\w.\-])((?:[a-z0-9]\w{0,63}?_)?(?:ssl)?(?:password|passwd|pwd|pass|secret|client_secret|token"
    r"|access_token|api_key|apikey)\s*=\s*)('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s,;&)]+)"
)
# Mappings printed as Python or JSON: `'password': 'secret'`, `"token": "..."`.
_QUOTED_PAIR = re.compile(
    rf"(?i)(['\"](?:{_SECRET_NAMES}|{_SECRET_NAME_WORDS}|authorization)['\"]\s*:\s*)"
    r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
)
# HTTP headers as text: `Authorization: Bearer x`, `X-Api-Key: x`. A bare value must look like a
# credential (a digit or punctuation, checked by `_mask_header`), so prose such as
# "Authorization: literal secret" reads on.
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|x-auth-token)(\s*[:=]\s*)"
    r"(?:(bearer|basic|token|digest)\s+)?([^\s,;'\"]+)"
)
_CREDENTIAL_CHARACTER = re.compile(r"[0-9._+/=\-]")
_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=\-]+)")
_BASIC = re.compile(r"\b(Basic\s+)([A-Za-z0-9+/]{6,}={0,2})(?![A-Za-z0-9+/=])")
# `scheme://user:password@host` anywhere in a text. The scheme is bounded: an unbounded one is
# tried from every letter of a long word and makes a long value quadratic.
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://[^\s'\"<>]+")

_lock = threading.Lock()
_registered: set[str] = set()
_ordered: list[str] = []


def register_secret(value: str | None) -> None:
    """Remember a secret value (as written and URL-encoded/decoded) so `redact` masks it."""
    if not value:
        return
    forms = {value, value.strip(), quote(value, safe=""), unquote(value)}
    global _ordered
    with _lock:
        new = {f for f in forms if len(f) >= MIN_SECRET_LENGTH and f not in _registered}
        if new:
            _registered.update(new)
            # Longest first, so that a secret containing another is masked whole.
            _ordered = sorted(_registered, key=len, reverse=True)


def register_url(url: str | None) -> None:
    """Register the credentials written in a URL (password, secret query parameters)."""
    for secret in url_secrets(url or ""):
        register_secret(secret)


def clear_secrets() -> None:
    """Forget every registered secret (for tests that load many projects in one process)."""
    global _ordered
    with _lock:
        _registered.clear()
        _ordered = []


def is_secret_key(key: str) -> bool:
    """Whether a setting or header of this name holds a credential (`token`, `X-Api-Key`,
    `Authorization`, `motherduck_token`), unless it names where one goes (`token_url`)."""
    name = key.lower().replace("-", "_")
    if name in _EXACT_SECRET_KEYS:
        return True
    return any(word in name for word in _SECRET_KEY_WORDS) and not name.endswith(
        _NOT_SECRET_SUFFIXES
    )


_EXACT_SECRET_KEYS = frozenset(
    {
        "token",
        "api_key",
        "apikey",
        "password",
        "secret",
        "client_secret",
        "access_token",
        "refresh_token",
        "private_key",
        "webhook_url",
    }
)
_SECRET_KEY_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "authorization")
_NOT_SECRET_SUFFIXES = ("_url", "_uri", "_field", "_property", "_header", "_env")


def url_password(url: str) -> str | None:
    """The password in a URL's userinfo (`scheme://user:password@host`), None when there is none."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    # Up to the query, not the first `/`: a password may hold a raw `/` or `@`.
    query = url.find("?", start)
    at = url.rfind("@", start, len(url) if query < 0 else query)
    user, colon, password = url[start : max(at, start)].partition(":")
    if at < 0 or not colon or "/" in user:
        return None
    return password


def url_secrets(url: str) -> list[str]:
    """The secrets written in a URL: its password and its credential query parameters."""
    found = [url_password(url) or ""]
    found.extend(_param_value(m)[0] for m in _QUERY_PARAM.finditer(url))
    return [s for s in found if s]


def mask_url(url: str) -> str:
    """The URL with its password and credential query parameters replaced by `***`; the rest
    reads exactly as written."""
    password = url_password(url)
    if password is not None and not _is_placeholder(password):
        head = url.find("://") + 3
        colon = url.find(":", head)
        url = url[: colon + 1] + MASK + url[colon + 1 + len(password) :]
    return _QUERY_PARAM.sub(_mask_query_param, url)


def redact(text: str) -> str:
    """`text` with every registered secret and every credential-looking value masked."""
    if not text:
        return text
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _QUERY_PARAM.sub(_mask_query_param, text)
    text = _ASSIGNMENT.sub(_mask_param, text)
    text = _QUOTED_PAIR.sub(_mask_param, text)
    text = _HEADER.sub(_mask_header, text)
    text = _BEARER.sub(_mask_param, text)
    return _BASIC.sub(_mask_param, text)


def redact_data(value: Any) -> Any:
    """A copy of a JSON-like document (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def _is_placeholder(value: str) -> bool:
    """`${PASSWORD}` as hints and unloaded files write it: a name, not a secret."""
    return value.startswith("${")


def _keeps(value: str) -> bool:
    return _is_placeholder(value.strip("'\"")) or value.strip("'\"").startswith(MASK)


def _mask_param(match: re.Match[str]) -> str:
    """`<group 1><group 2>` with group 2 (the value, perhaps quoted) masked."""
    value = match.group(2)
    if _keeps(value):
        return match.group(0)
    quote_char = value[0] if value[:1] in ("'", '"') else ""
    return match.group(1) + quote_char + MASK + quote_char


def _param_value(match: re.Match[str]) -> tuple[str, str]:
    """A query parameter's value and the punctuation after it that belongs to the text around."""
    raw = match.group(2)
    value = raw.rstrip(_TRAILING_PUNCTUATION)
    return value, raw[len(value) :]


def _mask_query_param(match: re.Match[str]) -> str:
    value, tail = _param_value(match)
    if _keeps(value):
        return match.group(0)
    return match.group(1) + MASK + tail


def _mask_header(match: re.Match[str]) -> str:
    value = match.group(4)
    if _keeps(value) or not (match.group(3) or _CREDENTIAL_CHARACTER.search(value)):
        return match.group(0)
    scheme = f"{match.group(3)} " if match.group(3) else ""
    return f"{match.group(1)}{match.group(2)}{scheme}{MASK}"
