"""The manifest is a batch job's contract with its output folder: what job wrote there, and which outputs it owns.

A rerun compares its own manifest with the folder's: the same job resumes (only missing outputs are made); a
different one (another checkpoint, seed, count, image policy or input set, an input whose bytes changed) is
refused with what differs, unless the caller overwrites, which clears the old job's outputs first.
`assemble` zips exactly the outputs the manifest names, nothing else in the folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

from gan.batch.pipeline import Row
from gan.io.images import IMAGE_SIZE
from gan.io.storage import Storage, StorageError

MANIFEST = "_manifest.json"
REPORT = "_report.json"
IMAGE_POLICY = {"size": IMAGE_SIZE, "mode": "RGB", "crop": "centre square", "resize": "lanczos",
                "format": "JPEG", "quality": 95}
SHOWN = 5  # names listed in a difference
BLOCK = 1 << 20  # the manifest is written and compared in blocks of about this many bytes


class JobMismatchError(ValueError):
    """The output folder holds another job's outputs; the message says what differs and what to do."""


@dataclass
class JobManifest:
    """A job's manifest, kept small: its head (job, fingerprint, settings, what is recorded) and the plan whose
    outputs it names. The per-output entries are written straight into the file's bytes, never held as dicts: at
    100,000 inputs those were ~40 MB of the driver's memory, and their JSON text twice more."""
    head: dict
    plan: list[Row]
    entries: _Entries   # the plan's output entries, sorted once for the fingerprint and the file

    @property
    def fingerprint(self) -> str:
        return self.head["fingerprint"]

    def blocks(self) -> Iterator[bytes]:
        """The file's bytes in blocks of about BLOCK, each made when asked for: joined, exactly what
        `json.dumps(manifest, indent=1, sort_keys=True)` writes of the whole manifest as a dict. At 1,000,000 inputs
        the file is ~210 MB, which the driver need not hold to write it or to compare it with the folder's."""
        present = {name: entries for name, entries in (("outputs", self.entries),
                                                       ("input_stats", _stat_entries(self.plan))) if entries}
        text = json.dumps({**self.head, "outputs": {}, **{name: f"\0{name}\0" for name in present}}, indent=1,
                          sort_keys=True)
        buf = io.BytesIO()
        for piece in _SECTION.split(text):  # the small part as json wrote it, each section streamed in its place
            name = piece[7:-7] if piece.startswith('"\\u0000') else None
            if name not in present:
                buf.write(piece.encode())
                continue
            buf.write(b"{")
            for i, (key, entry) in enumerate(present[name]):
                items = ",".join(f"\n   {_json(v)}" for v in entry)
                buf.write(f'{"," if i else ""}\n  {_json(key)}: [{items}\n  ]'.encode())
                if buf.tell() >= BLOCK:
                    yield buf.getvalue()
                    buf = io.BytesIO()
            buf.write(b"\n }")
        yield buf.getvalue()

    def write_to(self, storage: Storage) -> None:
        """Write the folder's manifest (atomically, as every write), a block at a time."""
        with storage.open_write(MANIFEST) as f:
            for block in self.blocks():
                f.write(block)

    def is_in(self, storage: Storage) -> bool:
        """Whether the folder's manifest (it has one) is byte for byte this one, compared a block at a time (neither
        file is held whole) and stopping at the first block that differs."""
        size, at = storage.size(MANIFEST), 0
        for block in self.blocks():
            if at + len(block) > size or storage.read_range(MANIFEST, at, len(block)) != block:
                return False
            at += len(block)
        return at == size


_SECTION = re.compile(r'("\\u0000(?:outputs|input_stats)\\u0000")')  # a section's place in the small part's JSON


def _json(value) -> str:
    """One value as json.dumps writes it (C-fast for the strings and ints a manifest holds)."""
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    return str(value) if type(value) is int else json.dumps(value)


class _Entries:
    """(key, entry) of rows sorted by key, made one at a time (json's sort_keys order, without the dict)."""

    def __init__(self, rows: list[Row], key, entry):
        self.rows, self.key, self.entry = sorted(rows, key=key), key, entry

    def __bool__(self) -> bool:
        return bool(self.rows)

    def __iter__(self):
        last = len(self.rows) - 1
        for i, row in enumerate(self.rows):
            key = self.key(row)
            if i < last and self.key(self.rows[i + 1]) == key:
                continue  # a key twice: a dict keeps the last value
            yield key, self.entry(row)


def _output_entries(plan: list[Row]) -> _Entries:
    """(output, [input name, size, content tag]) of each row."""
    return _Entries(plan, lambda row: row.out,
                    lambda row: [row.name, row.item.size, row.item.tag] if row.item else [row.name])


def _stat_entries(plan: list[Row]) -> _Entries:
    """(input key, [stat, tag]) of each local input: when its tag was taken (see `job_manifest`)."""
    return _Entries([row for row in plan if row.item and row.item.stat], lambda row: row.item.key,
                    lambda row: [row.item.stat, row.item.tag])


def _fingerprint(settings: dict, outputs: _Entries) -> str:
    """sha256 of json.dumps([settings, outputs], sort_keys=True), streamed (the same value as manifests before)."""
    h = hashlib.sha256(f"[{json.dumps(settings, sort_keys=True)}, {{".encode())
    for i, (out, entry) in enumerate(outputs):
        h.update(f'{", " if i else ""}{_json(out)}: [{", ".join(_json(v) for v in entry)}]'.encode())
    h.update(b"}]")
    return h.hexdigest()


def job_manifest(job: str, kind: str, checkpoint: bytes, plan: list[Row], settings: dict,
                 extra: dict) -> JobManifest:
    """The manifest of a job: its settings (what decides every output's pixels), and each output with the
    input it comes from (name, size and content tag), fingerprinted together. It also records when each local
    input's tag was taken (outside the fingerprint: a copied folder is still the same job), so a rerun digests only
    the files that changed since (gan.io.sources.scan_inputs)."""
    settings = {"job": job, "kind": kind, "checkpoint_sha256": hashlib.sha256(checkpoint).hexdigest(),
                "image_policy": IMAGE_POLICY, **settings}
    outputs = _output_entries(plan)
    return JobManifest({"job": job, "fingerprint": _fingerprint(settings, outputs), "settings": settings, **extra},
                       plan, outputs)


class KnownInputs:
    """{input key: (stat, tag)} of the local inputs an earlier run tagged, asked for key by key in sorted order (as
    the planning's listing comes): a cursor over the entries, not a dict of them (that dict was ~470 MB of the
    driver at 1,000,000 inputs). A key asked for out of order, or past an entry that cannot be read, is not known:
    its file is digested again, which is always safe."""

    def __init__(self, entries: Iterator[tuple[str, str, str]]):
        self._entries = entries
        self._next = next(entries, None)

    def get(self, key: str) -> tuple[str, str] | None:
        while self._next is not None and self._next[0] < key:
            self._next = next(self._entries, None)
        if self._next is not None and self._next[0] == key:
            return self._next[1], self._next[2]
        return None


_ENTRY_END = b"\n  ]"  # an entry of a section as JobManifest.blocks writes it ends its list so (no string holds "\n")


def _stat_entries_of(section: bytes) -> Iterator[tuple[str, str, str]]:
    """(key, stat, tag) of each entry of the input stats section's bytes (`{` to `}`), in the file's order (sorted),
    parsed by json a chunk of about BLOCK bytes at a time (one dict of the whole was ~470 MB at 1,000,000), up to
    the first entry that is not [stat, tag] (strings) or the first chunk that is not valid JSON."""
    at, end = 1, len(section) - 3  # inside the braces: the entries, then "\n }"
    while at < end:
        cut = section.find(_ENTRY_END + b",", min(at + BLOCK, end))
        cut = end if cut < 0 else cut + len(_ENTRY_END)
        try:
            chunk = json.loads(b"{" + section[at:cut] + b"}")
        except ValueError:
            return
        for key, value in chunk.items():
            if not _is_stat(value):
                return
            yield key, value[0], value[1]
        at = cut + 1  # past the comma between two entries


def _is_stat(value) -> bool:
    """Whether an input stats entry's value is [stat, tag], as JobManifest.blocks writes it."""
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def known_inputs(storage: Storage) -> KnownInputs:
    """The local inputs an earlier run of a job in this folder tagged (see KnownInputs). Only the input stats
    section of the manifest is kept, read entry by entry as asked for, when it can be found; any other manifest is
    parsed whole, and one that cannot be read (none there included: one request, not a look first) knows nothing."""
    try:
        data = storage.read(MANIFEST)
    except StorageError:
        return KnownInputs(iter(()))
    bounds = _section_bounds(data, "input_stats")
    if bounds is not None:
        return KnownInputs(_stat_entries_of(data[bounds[0]:bounds[1]]))  # the rest of the file is let go
    stats = (parse_manifest(data) or {}).get("input_stats")
    if not isinstance(stats, dict):
        return KnownInputs(iter(()))
    return KnownInputs(iter(sorted((k, v[0], v[1]) for k, v in stats.items() if _is_stat(v))))


def _section_bounds(data: bytes, name: str) -> tuple[int, int] | None:
    """Where a top-level section's value (from its `{` to its `}`) lies in a manifest's bytes, or None when it is
    not found as JobManifest.blocks writes it (a newline and one space before its name; it ends at the first
    newline, space, brace: JSON strings hold no raw newline)."""
    head = f'\n "{name}": {{'.encode()
    start = data.find(head)
    end = data.find(b"\n }", start + 1) if start >= 0 else -1
    return (start + len(head) - 1, end + 3) if end >= 0 else None


def read_manifest(storage: Storage) -> dict | None:
    """The folder's manifest without its input stats, or None when it has none; one that cannot be read counts as
    another job's."""
    if not storage.exists(MANIFEST):
        return None
    try:
        return parse_manifest(storage.read(MANIFEST), stats=False)
    except StorageError:
        return {"unreadable": True}


def parse_manifest(data: bytes | None, stats: bool = True) -> dict | None:
    """A manifest's bytes as a dict (None for no manifest); bytes that are not one count as another job's.
    `stats=False` leaves the input stats out of the parse (most of a local job's manifest, and ~4x its bytes once
    parsed: naming what differs and zipping the outputs never read them)."""
    if data is None:
        return None
    bounds = None if stats else _section_bounds(data, "input_stats")
    if bounds is not None:  # joined from views: no copy of the rest before the one the join makes
        view = memoryview(data)
        data = b"".join((view[:bounds[0]], b"{}", view[bounds[1]:]))
    try:
        manifest = json.loads(data)
    except ValueError:
        return {"unreadable": True}
    return manifest if isinstance(manifest, dict) else {"unreadable": True}


def _entry(value) -> list:
    return value if isinstance(value, list) else [value]  # manifests before the contract: {output: name}


def _names(items: list[str]) -> str:
    return ", ".join(sorted(items)[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def differences(old: dict, new: JobManifest) -> list[str]:
    """What makes `new` another job than `old`, in words: changed settings, then changed, added, removed inputs."""
    if "settings" not in old:
        return ["written by an older version, without a job contract"]
    out = []
    settings = new.head["settings"]
    for key in sorted(set(old["settings"]) | set(settings)):
        a, b = old["settings"].get(key), settings.get(key)
        if a != b:
            label = "checkpoint" if key == "checkpoint_sha256" else key.replace("_", " ")
            short = (lambda v: str(v)[:12]) if key == "checkpoint_sha256" else str
            out.append(f"{label} {short(a)} -> {short(b)}")
    before = {_entry(v)[0]: _entry(v)[1:] for v in old["outputs"].values()}
    after = {entry[0]: entry[1:] for _, entry in new.entries}
    changed = [n for n in after if n in before and before[n] != after[n]]
    for what, names in (("changed", changed), ("added", [n for n in after if n not in before]),
                        ("removed", [n for n in before if n not in after])):
        if names:
            out.append(f"{len(names)} input{'s' if len(names) > 1 else ''} {what} ({_names(names)})")
    return out or ["outputs named differently"]


def check_same_job(storage: Storage, old: dict | JobManifest | None, new: JobManifest, planned: list[str],
                   existing: set[str]) -> None:
    """Raise JobMismatchError unless the folder holds this same job, or nothing this job would write. `old` is the
    folder's manifest, parsed, or `new` itself when the folder's is byte for byte this job's."""
    hint = "rerun with --overwrite to replace its outputs, or give another --output"
    if old is None:
        foreign = [key for key in planned if key in existing]
        if foreign:
            raise JobMismatchError(f"{storage.uri}: already holds {len(foreign)} of this job's output names "
                                   f"({_names(foreign)}) but no {MANIFEST} says which job wrote them; {hint}")
        return
    if old is new or old.get("fingerprint") == new.fingerprint:
        return
    what = "; ".join(differences(old, new)) if "unreadable" not in old else f"its {MANIFEST} is unreadable"
    raise JobMismatchError(f"{storage.uri}: holds a different {old.get('job', 'batch')} job ({what}); {hint}")


def clear_outputs(storage: Storage, old: dict | JobManifest | None, planned: list[str], existing: set[str]) -> int:
    """--overwrite: delete the old job's outputs, its report and manifest, and any file under a planned name."""
    owned = {row.out for row in old.plan} if isinstance(old, JobManifest) else (old or {}).get("outputs", {})
    doomed = set(planned) | ({*owned, REPORT, MANIFEST} if old else set())
    doomed &= existing
    for key in sorted(doomed):
        storage.delete(key)
    return len(doomed)


def write_report(storage: Storage, report: dict) -> None:
    """`_report.json`, written whole (atomically, as every write)."""
    storage.write(REPORT, json.dumps(report, indent=1).encode())


def manifest_outputs(storage: Storage, check_present: bool = True) -> list[str] | None:
    """The outputs a finished job owns (its manifest's, less inputs its report rejected), or None without a
    manifest. With `check_present`, one listing first: StorageError when some are missing (the job has not
    finished)."""
    manifest = read_manifest(storage)
    if manifest is None or "unreadable" in manifest:
        return None
    rejected: set[str] = set()
    if storage.exists(REPORT):
        rejected = {r["name"] for r in json.loads(storage.read(REPORT)).get("rejected", [])}
    keys = sorted(out for out, entry in manifest.get("outputs", {}).items() if _entry(entry)[0] not in rejected)
    if not check_present:
        return keys
    present = set(storage.list())
    missing = [k for k in keys if k not in present]
    if missing:
        raise StorageError(f"{storage.uri}: {len(missing)} outputs of its job are missing ({_names(missing)}): "
                           "rerun the job to finish it")
    return keys
