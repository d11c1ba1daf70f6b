"""The one reading of an HTTP ``Content-Range`` header, for every ranged download (Hub, S3).

A 206 says which bytes it carries as ``bytes FIRST-LAST/LENGTH`` (RFC 9110, section 14.4;
LENGTH may be ``*``, unknown). Both readers check that an answer starts where it was asked
to, and one also takes the object's full length from it.
"""

from __future__ import annotations

import re

__all__ = ["parse_content_range"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z", re.IGNORECASE)  # range units are case-insensitive


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first byte, last byte, full length or None for ``*``), or None when ``value`` is missing or
    not of that form."""
    m = _CONTENT_RANGE.match((value or "").strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), None if m.group(3) == "*" else int(m.group(3))
