"""Processes of a job a test started, found by a tag in their environment: Ray's workers inherit the environment
of the driver (or the job's runtime_env) that started them, but run in process groups of their own, so killing or
stopping a driver does not tell when the last of its workers is gone."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

TAG = "GAN_TEST_JOB_TAG"


def new_tag() -> str:
    return os.urandom(8).hex()


def tagged(tag: str) -> dict[int, str]:
    """pid -> title of every live process whose environment holds `tag`."""
    needle, found = f"{TAG}={tag}".encode(), {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or a zombie (whose environment reads empty)
            continue
    return found


def kill_tagged(tag: str, timeout: float = 60.0) -> None:
    """SIGKILL the tagged processes until none is left (a whole node lost: nothing of the job writes after this)."""
    deadline = time.monotonic() + timeout
    while left := tagged(tag):
        assert time.monotonic() < deadline, f"processes of the killed job are still alive: {left}"
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def wait_until_idle(tag: str, timeout: float = 60.0) -> None:
    """Until no tagged process is left but Ray's idle pooled workers (which run none of the job's code)."""
    deadline = time.monotonic() + timeout
    while busy := {pid: t for pid, t in tagged(tag).items() if not t.startswith("ray::IDLE")}:
        assert time.monotonic() < deadline, f"processes of the stopped job are still working: {busy}"
        time.sleep(0.1)
