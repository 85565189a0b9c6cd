"""Passwords out of anything shown: URLs in error lines, stack status, reprs and logs.

A Redis URL may carry `user:password@` (and redis-py also reads `?password=`); every place
that prints an address passes it through here first, so the password never reaches a
terminal, a log file or a CI transcript. The user name and the host stay: they are what a
person needs to tell which server and which account failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# scheme://[user]:password@  (the password may be empty; it ends at the last '@' before the
# host, so a password holding '@' or ':' is still hidden whole)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/?#@:]*):[^\s/?#]*@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token)=)[^&#\s]*", re.I)


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (user name, host, port and path kept)."""
    return redact_text(url)


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Text with the passwords of every URL in it masked, and each given secret too."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
