"""Keep secrets out of messages: mask the password of a URL and any secret an error repeats."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

# Query parameters whose value is a credential (`?password=...`, `?motherduck_token=...`).
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[a-z0-9_]*(?:password|passwd|pwd|token|secret|api_?key|access_?key)"
    r"[a-z0-9_]*)=)([^&;#\s]*)"
)
# `key=value` credentials as libpq-style DSNs and driver messages write them.
_SECRET_ASSIGNMENT = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('[^']*'|\S+)")
# `scheme://user:password@` anywhere in a text.
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """The URL with its password (and credential query parameters) replaced by `***`.

    Works on the text as written, so the rest of the URL reads exactly as the user wrote it; when in
    doubt it masks more, never less.
    """
    scheme_end = url.find("://")
    if scheme_end < 0:
        return _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, url)
    start = scheme_end + 3
    query_start = url.find("?", start)
    end = len(url) if query_start < 0 else query_start
    at = url.rfind("@", start, end)
    masked = url
    if at >= 0:
        userinfo = url[start:at]
        colon = userinfo.find(":")
        if colon >= 0:
            masked = url[: start + colon + 1] + MASK + url[at:]
    return _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, masked)


def url_secrets(url: str) -> list[str]:
    """The secrets written in a URL (its password, raw and decoded), to redact from messages."""
    found: list[str] = []
    scheme_end = url.find("://")
    if scheme_end >= 0:
        start = scheme_end + 3
        query_start = url.find("?", start)
        end = len(url) if query_start < 0 else query_start
        at = url.rfind("@", start, end)
        if at >= 0 and ":" in url[start:at]:
            found.append(url[start:at].split(":", 1)[1])
    found.extend(m.group(2) for m in _SECRET_PARAM.finditer(url))
    found.extend([unquote(secret) for secret in found])
    return sorted({s for s in found if s}, key=len, reverse=True)


class Redactor:
    """Removes known secrets, URL passwords and `password=...` assignments from a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    @classmethod
    def for_url(cls, url: str) -> Redactor:
        return cls(url_secrets(url))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
        return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
