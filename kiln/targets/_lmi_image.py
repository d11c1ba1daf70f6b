"""Reading which LMI image Kiln runs in: DJL's telemetry file, shared by the targets whose consumers are LMI images.

Every LMI image writes "<release> <variant>" to /opt/djl/bin/telemetry (serving/docker/*.Dockerfile: `echo
"${djl_serving_version} inf2" > /opt/djl/bin/telemetry`, "gpu" in the GPU images). KILN_LMI_TELEMETRY_FILE names
another path (an image that moved it; tests). Each target reads the release and variant it cares about.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["LMI_TELEMETRY_FILE", "read_lmi_telemetry"]

LMI_TELEMETRY_FILE = "/opt/djl/bin/telemetry"


def read_lmi_telemetry() -> tuple[str, str] | None:
    """``(the file's first bytes, its path)``, or None where there is no such file."""
    path = os.environ.get("KILN_LMI_TELEMETRY_FILE") or LMI_TELEMETRY_FILE
    try:
        if not Path(path).is_file():  # not a FIFO or device: opening one could block
            return None
        with open(path, "rb") as f:
            return f.read(200).decode("utf-8", errors="replace"), path
    except OSError:
        return None
