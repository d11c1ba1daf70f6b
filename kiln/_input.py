"""Reading what users hand Kiln, safely: bounded reads of small files, values shown in messages.

Input that Kiln parses (serving.properties, config.json, safetensors headers) can be a device,
a FIFO, or gigabytes long; a value quoted in an error can be thousands of characters, hold
control characters, or be an integer Python refuses to print (``int`` → ``str`` is capped at
4300 digits). Every parser goes through these helpers so that bad input is one clear line,
never a hang, a traceback or a screenful.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

from .errors import KilnError

__all__ = ["show", "show_path", "read_small_file"]

_SHOW_MAX = 60  # characters of a value quoted in a message


def show(value: Any, limit: int = _SHOW_MAX) -> str:
    """``repr(value)`` for a message: one line, at most about ``limit`` characters.

    Huge integers are described rather than printed (``repr`` of a 5000-digit int raises
    ValueError); long strings are cut and their length given; ``repr`` escapes control
    characters, so the message stays on one line.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}<an integer of about {digits} digits>"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[: limit - 10]) + f"… ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray)) and len(value) > limit:
        return repr(bytes(value[: limit - 10])) + f"… ({len(value)} bytes)"
    text = repr(value)
    return text if len(text) <= limit + 10 else text[:limit] + "…"


def show_path(path: Any) -> str:
    """A path for a message: as written when printable, else repr'd (control characters escaped)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def read_small_file(path: Path | str, limit: int, what: str,
                    error: Callable[[str], KilnError], fix: str) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file of at most ``limit`` bytes.

    Opened with O_NONBLOCK so that a FIFO is refused instead of waiting for a writer; the
    check is on the opened descriptor (fstat), so a path swapped in between cannot slip
    past it. ``what`` names the file in messages ("serving.properties file"), ``error`` is
    the KilnError type raised, ``fix`` says what to do (appended to every message).
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {show_path(p)} does not exist; check the path.") from None
    except IsADirectoryError:
        raise error(f"{what} {show_path(p)} is a directory, not a file; {fix}.") from None
    except OSError as e:
        raise error(f"cannot read {what} {show_path(p)}: {e.strerror}; {fix}.") from None
    except ValueError:  # a NUL byte in the path (only the Python API can pass one)
        raise error(f"{what} path {show_path(p)} holds a NUL byte; {fix}.") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {show_path(p)} is a directory, not a file; {fix}.")
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or \
                stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
            raise error(f"{what} {show_path(p)} is {kind}, not a regular file; {fix}.")
        if st.st_size > limit:
            raise error(f"{what} {show_path(p)} is {st.st_size} bytes, more than the {_size(limit)} Kiln reads; {fix}.")
        chunks, total = [], 0
        while True:  # a file that grows while it is read is still cut at the limit
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(f"{what} {show_path(p)} is more than the {_size(limit)} Kiln reads; {fix}.")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"cannot read {what} {show_path(p)}: {e.strerror}; {fix}.") from None
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"
