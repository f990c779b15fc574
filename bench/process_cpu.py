"""Where a command's CPU goes, by process kind: every process on the machine sampled while the command runs.

    python bench/process_cpu.py -- python -m pytest -q tests/test_tune.py -k asha

Ray runs each actor in a process of its own, titled `ray::ClassName` (`ray::ClassName.method` while a method
runs); a Ray Train run starts several (its controller, workers, and Ray's helpers beside them). This sums the CPU
seconds of each kind and counts its processes, so a per-run cost that no single profile shows (a process start, a
module import) adds up where it repeats. Processes are read from /proc every 0.2 s: one that lives under that
is missed, and a process is charged to the title it was first seen with (an idle pooled worker is charged to the
actor it becomes).
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[tuple[str, str], tuple[str, float]]:
    """(pid, start time) -> (title, CPU seconds) of every process readable now."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        out[(pid, fields[19])] = (title, (int(fields[11]) + int(fields[12])) / HZ)
    return out


def _is_actor(title: str) -> bool:
    return title.startswith("ray::") and not title.startswith("ray::IDLE")


def kind(title: str) -> str:
    """`ray::TrainController.run` -> `ray::TrainController`; a python command -> its script or module."""
    if title.startswith("ray::"):
        return title.split()[0].split(".")[0]
    words = title.split()
    if words and "python" in os.path.basename(words[0]):
        words = words[1:]
    return " ".join(words[:2])[:60] or "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top", type=int, default=25, help="kinds to print")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give a command after --")
    before = snapshot()
    seen: dict = {}
    started = time.monotonic()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        for key, (title, cpu) in snapshot().items():
            kept = seen.get(key, (title, 0.0))[0]
            # keep the first actor's title: a worker starts as default_worker.py's command line, waits in the
            # pool as `ray::IDLE`, then takes its actor's; a dying process's command line reads empty
            if not _is_actor(kept) and title and not title.startswith("ray::IDLE"):
                kept = title
            seen[key] = (kept, cpu)
        time.sleep(0.2)
    wall = time.monotonic() - started
    kinds: dict = collections.defaultdict(lambda: [0.0, 0])
    for key, (title, cpu) in seen.items():
        cpu -= before.get(key, ("", 0.0))[1]  # a process older than the command: only what it spent since
        if cpu > 0.05:
            kinds[kind(title)][0] += cpu
            kinds[kind(title)][1] += 1
    total = sum(cpu for cpu, _ in kinds.values())
    print(f"exit {proc.returncode}, wall {wall:.1f} s, CPU {total:.1f} s ({total / wall:.2f} cores busy)")
    print(f"{'CPU s':>8} {'procs':>6}  kind")
    for name, (cpu, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{cpu:8.1f} {n:6d}  {name}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
