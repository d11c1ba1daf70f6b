"""kiln._packages.installed_version: what importlib.metadata says, read from directory names.

Checked against every distribution installed in this environment, and against made-up
site-packages directories with the layouts installers write (wheels, legacy names with
hyphens, eggs, egg-info) placed first on sys.path.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

from kiln._packages import installed_version


def test_agrees_with_importlib_metadata_for_everything_installed_here() -> None:
    names = sorted({d.metadata["Name"] for d in importlib.metadata.distributions() if d.metadata["Name"]})
    assert len(names) > 20
    for name in names:
        assert installed_version(name) == importlib.metadata.version(name), name
        spelled = name.upper().replace("-", "_")  # another spelling of the same project
        assert installed_version(spelled) == importlib.metadata.version(spelled), spelled


def test_an_absent_package_is_none_without_importlib_metadata() -> None:
    assert installed_version("tensorrt_llm-not-installed-anywhere") is None


def _site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *dirs: str) -> None:
    site = tmp_path / "site"
    for d in dirs:
        (site / d).mkdir(parents=True)
        if d.endswith(".dist-info"):
            name, version = d[: -len(".dist-info")].rsplit("-", 1)
            (site / d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        elif d.endswith(".egg-info"):
            name, version = d[: -len(".egg-info")].split("-")[:2]
            (site / d / "PKG-INFO").write_text(f"Metadata-Version: 1.1\nName: {name}\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


@pytest.mark.parametrize("layout,asked,want", [
    ("tensorrt_llm-0.21.0.dist-info", "tensorrt_llm", "0.21.0"),
    ("tensorrt_llm-0.21.0.dist-info", "tensorrt-llm", "0.21.0"),
    ("neuronx_cc-2.16.372.0+4a9b2326.dist-info", "neuronx-cc", "2.16.372.0+4a9b2326"),
    ("Old.Style_Name-1.0rc1.dist-info", "old-style-name", "1.0rc1"),
    ("legacyproj-3.2-py3.11.egg-info", "legacyproj", "3.2"),
])
def test_made_up_layouts_first_on_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           layout: str, asked: str, want: str) -> None:
    _site(tmp_path, monkeypatch, layout)
    assert installed_version(asked) == want == importlib.metadata.version(asked)


@pytest.mark.parametrize("layout,metadata", [
    ("foo-1.0.dist-info", None),  # a half-removed leftover: no METADATA
    ("foo-1.0rc1.dist-info", "Name: foo\nVersion: 1.0-rc1\n"),  # the name normalised, METADATA raw
    ("foo-1.0.0_rc1.dist-info", "Name: foo\nVersion: 1.0.0-rc1\n"),  # old wheel escaping
    ("foo-2.0.dist-info", "Name: foo\nVersion: 2.1\n"),  # hand-edited: METADATA is the truth
    ("foo-1.0-dev.dist-info", "Name: foo\nVersion: 1.0-dev\n"),  # a "-" in the version
    ("foo-1.0.DIST-INFO", "Name: foo\nVersion: 1.0\n"),  # upper-case suffix
    ("foo-1.0.dist-info", "Name: foo\nSummary: x\n\nVersion: 9.9\n"),  # "Version" only in the body
])
def test_odd_layouts_get_importlib_metadatas_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    layout: str, metadata: str | None) -> None:
    (tmp_path / "site" / layout).mkdir(parents=True)
    if metadata is not None:
        (tmp_path / "site" / layout / "METADATA").write_text(metadata)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    try:
        want = importlib.metadata.version("foo")
    except importlib.metadata.PackageNotFoundError:
        want = None
    assert installed_version("foo") == want


def test_the_first_directory_on_the_path_wins_as_for_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = f"pytest-{'0.0.1'}.dist-info"  # shadows the real pytest for this process's path
    _site(tmp_path, monkeypatch, shadow)
    assert sys.path[0].endswith("site")
    assert installed_version("pytest") == "0.0.1" == importlib.metadata.version("pytest")


def test_a_package_installed_while_the_process_runs_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Directory listings are kept per process, but only while the directory is unchanged."""
    _site(tmp_path, monkeypatch, "present-1.0.dist-info")
    monkeypatch.setattr("kiln._packages._from_metadata", lambda dist: pytest.fail(f"importlib.metadata asked for {dist}"))
    assert installed_version("present") == "1.0"
    assert installed_version("latecomer") is None
    (tmp_path / "site" / "latecomer-2.0.dist-info").mkdir()
    (tmp_path / "site" / "latecomer-2.0.dist-info" / "METADATA").write_text("Name: latecomer\nVersion: 2.0\n")
    # The kernel stamps mtimes from a clock that ticks every few ms: move it on as a later install would.
    st = (tmp_path / "site").stat()
    os.utime(tmp_path / "site", ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert installed_version("latecomer") == "2.0"


def test_an_install_in_the_same_mtime_tick_as_a_listing_is_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package installed into a directory listed moments before, in the same tick of the mtime
    clock (so the directory's mtime did not move), is found: a recently changed directory is never
    listed from memory. The same tick is a stand-in: the mtime is put back as it was."""
    monkeypatch.setattr("kiln._packages._RACY_NS", 3600 * 10**9)  # "recent" holds however slow this machine is
    _site(tmp_path, monkeypatch, "present-1.0.dist-info")
    assert installed_version("pytest") == importlib.metadata.version("pytest")  # not in site: found further on
    st = (tmp_path / "site").stat()
    (tmp_path / "site" / "pytest-0.0.1.dist-info").mkdir()
    (tmp_path / "site" / "pytest-0.0.1.dist-info" / "METADATA").write_text("Name: pytest\nVersion: 0.0.1\n")
    os.utime(tmp_path / "site", ns=(st.st_atime_ns, st.st_mtime_ns))  # the same tick as the listing
    assert installed_version("pytest") == "0.0.1"
