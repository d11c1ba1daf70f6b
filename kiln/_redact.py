"""Credentials out of everything Kiln prints or writes: URLs and command lines, redacted.

A remote URL can carry secrets two ways: userinfo (``http://KEY:SECRET@host``, also inside
another URL's query, ``s3://b/p?endpoint=http://KEY:SECRET@127.0.0.1:9000``, percent-encoded
or not) and query parameters that are credentials by name (``?secret=…``, presigned
``X-Amz-Signature=…``). Both are replaced by ``***`` wherever a URL is shown in a message,
stored in a build record's command line, or written to the store or a bucket. Redaction is
by pattern on the text, so it also covers a URL embedded in a longer argument
(``--remote=s3://…``) and one that does not parse as a URL at all.
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["REDACTED", "redact", "redact_args"]

REDACTED = "***"

# The patterns are compiled on first use (re's cache), not at import: the lookup path imports this
# module and most lookups print no URL (docs/benchmarks.md, issue 18, "Lookup").
# scheme://userinfo@ — userinfo runs to the last '@' before whitespace, '&' or the next URL:
# secrets hold '/', '?', '#' and '@' raw as often as percent-encoded (AWS secret keys are base64,
# with '/'), and redacting too much is safe where too little is not.
_USERINFO = r"(?i)([a-z][a-z0-9+.-]*://)((?:(?![a-z][a-z0-9+.-]*://)[^\s&])*)@"
# The same, percent-encoded inside a query value (once or twice): http%3A%2F%2FKEY%3ASE%2FCRET%40host
_USERINFO_ENCODED = (r"(?i)([a-z][a-z0-9+.-]*%(?:25)?3A%(?:25)?2F%(?:25)?2F)"
                     r"((?:(?!%(?:25)?3A%(?:25)?2F%(?:25)?2F)[^\s&])*)%(25)?40")
# Query parameters whose value is a credential, by name (case-insensitive, any position).
_SECRET_PARAM = (
    r"(?i)([?&;](?:[a-z0-9_.-]*(?:secret|token|password|passwd|pwd|signature|credential|session|"
    r"access[_-]?key|api[_-]?key|auth)[a-z0-9_.-]*)=)([^&#\s]*)"
)


def redact(text: str) -> str:
    """``text`` with every URL credential replaced by ``***`` (userinfo and secret query values)."""
    if "@" not in text and "40" not in text and "=" not in text:
        return text  # the common case: nothing that could hold a credential
    text = re.sub(_USERINFO, lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = re.sub(_USERINFO_ENCODED, lambda m: f"{m.group(1)}{REDACTED}%{m.group(3) or ''}40", text)
    return re.sub(_SECRET_PARAM, lambda m: f"{m.group(1)}{REDACTED}", text)


def redact_args(args: Iterable[str]) -> list[str]:
    """A command line with credentials redacted in each argument (for build records)."""
    return [redact(a) for a in args]
