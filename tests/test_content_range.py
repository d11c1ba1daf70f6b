"""kiln._content_range: the one reading of Content-Range, shared by the Hub and S3 downloads."""

from __future__ import annotations

import pytest

from kiln._content_range import parse_content_range


@pytest.mark.parametrize("value, parsed", [
    ("bytes 0-99/1000", (0, 99, 1000)),
    (" bytes 1048576-2097151/3145728 ", (1048576, 2097151, 3145728)),
    ("Bytes 5-9/*", (5, 9, None)),  # the unit is case-insensitive; `*`: the full length is unknown
])
def test_a_content_range_is_read(value: str, parsed: tuple[int, int, int | None]) -> None:
    assert parse_content_range(value) == parsed


@pytest.mark.parametrize("value", [None, "", "bytes */1000", "bytes 0-99", "items 0-99/1000", "bytes 0-99/1000x",
                                   "bytes -1-99/1000", "bytes 0-99/1000, bytes 100-199/1000"])
def test_anything_else_is_none(value: str | None) -> None:
    """An unsatisfied-range answer (``*/1000``), a missing length, another unit or trailing text."""
    assert parse_content_range(value) is None
