"""The one progress-callback type of the cache package.

Every byte-moving operation (hashing, storing, materialising, uploading, downloading) takes
an optional ``progress`` callable and calls it with the number of bytes it just handled, as
the work advances; the sum of the calls is the operation's total. Defined here, in a module
that imports nothing of Kiln, so that every part of the package can use it without an
import cycle.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Progress"]

Progress = Callable[[int], None]  # called with byte counts as work advances
