"""The single-flight build lock: it says who holds it, and only when someone does.

Real processes hold and wait for real flocks; a waiter blocked in the kernel is seen in
/proc/locks (no sleeps standing in for "it is waiting by now").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from kiln.cache._locks import SingleFlight, describe_holder, single_flight

from ..cli._helpers import until_blocked_on

HOLD = """
import sys
from pathlib import Path
from kiln.cache._locks import single_flight
lock = single_flight(Path(sys.argv[1]), sys.argv[2])
lock.acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
lock.release()
"""


def _holder(lock_dir: Path, key: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_dir), key], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _release(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(timeout=60)
    proc.stdout.close()


def test_a_free_lock_is_taken_without_a_word(tmp_path: Path) -> None:
    said: list[str] = []
    lock = single_flight(tmp_path, "k" * 64)
    with lock.held(on_wait=said.append):
        assert lock.is_locked
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"].endswith("Z")
    assert said == []
    assert not lock.path.exists()  # a free lock names no holder: its holder removed the file


def test_a_waiter_is_told_who_holds_the_lock(tmp_path: Path) -> None:
    key = "a" * 64
    holder = _holder(tmp_path, key)
    said: list[str] = []
    acquired = threading.Event()

    def wait_for_it() -> None:
        with single_flight(tmp_path, key).held(on_wait=said.append):
            acquired.set()

    waiter = threading.Thread(target=wait_for_it)
    try:
        waiter.start()
        # The waiter reports before it blocks: once it is blocked in flock, the report is there.
        until_blocked_on(tmp_path / f"build-{key}.lock")
        assert not acquired.is_set()
        assert len(said) == 1
        assert f"held by pid {holder.pid} on {socket.gethostname()} since " in said[0]
    finally:
        _release(holder)
        waiter.join(timeout=60)
    assert acquired.is_set()


def test_a_killed_holder_does_not_block_the_next_builder(tmp_path: Path) -> None:
    key = "b" * 64
    holder = _holder(tmp_path, key)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.close()
    holder.stdout.close()
    said: list[str] = []
    with single_flight(tmp_path, key).held(on_wait=said.append):
        pass
    assert said == []  # the kernel dropped the dead holder's flock; its stale note is not read


def test_a_timeout_names_the_holder(tmp_path: Path) -> None:
    key = "c" * 64
    holder = _holder(tmp_path, key)
    try:
        lock = SingleFlight(tmp_path / f"build-{key}.lock", timeout=0)
        try:
            lock.acquire()
        except TimeoutError as e:
            assert f"pid {holder.pid}" in str(e)
        else:
            raise AssertionError("acquired a lock another process holds")
    finally:
        _release(holder)


def test_holder_notes_from_anyone_are_printed_safely() -> None:
    assert describe_holder(None) == "held by another process"
    assert describe_holder({"host": "x"}) == "held by another process"
    text = describe_holder({"pid": 1, "host": "evil\x1b[2Jhost" + "x" * 500, "started": "2026-01-01T00:00:00Z"})
    assert "\x1b" not in text and len(text) < 300
