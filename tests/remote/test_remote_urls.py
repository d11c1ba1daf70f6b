"""Remote URLs mean what they say: a file URL with a host (file://tmp/x is host "tmp", path /x)
or without a path is refused before anything is created, instead of quietly using another path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_kiln


@pytest.mark.parametrize("url", ["file://tmp/kiln-remote-x", "file://", "file://server/share/kiln"])
def test_file_urls_with_a_host_or_no_path_are_refused(url: str, tmp_path: Path) -> None:
    r = run_kiln("--remote", url, "ls", "--remote")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is not a local file URL" in r.stderr and "file:///" in r.stderr and "Traceback" not in r.stderr
    assert not Path("/kiln-remote-x").exists() and not Path("/share").exists()


def test_a_file_url_with_three_slashes_is_that_path(tmp_path: Path) -> None:
    remote = tmp_path / "shared"
    r = run_kiln("--remote", f"file://{remote}", "ls", "--remote", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "[]" and remote.is_dir()
