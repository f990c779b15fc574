"""The manifest is a batch job's contract with its output folder: what job wrote there, and which outputs it owns.

A rerun compares its own manifest with the folder's: the same job resumes (only missing outputs are made); a
different one (another checkpoint, seed, count, image policy or input set, an input whose bytes changed) is
refused with what differs, unless the caller overwrites, which clears the old job's outputs first.
`assemble` zips exactly the outputs the manifest names, nothing else in the folder.
"""
from __future__ import annotations

import hashlib
import json

from gan.batch.pipeline import Row
from gan.io.images import IMAGE_SIZE
from gan.io.storage import Storage, StorageError

MANIFEST = "_manifest.json"
REPORT = "_report.json"
IMAGE_POLICY = {"size": IMAGE_SIZE, "mode": "RGB", "crop": "centre square", "resize": "lanczos",
                "format": "JPEG", "quality": 95}
SHOWN = 5  # names listed in a difference


class JobMismatchError(ValueError):
    """The output folder holds another job's outputs; the message says what differs and what to do."""


def job_manifest(job: str, kind: str, checkpoint: bytes, plan: list[Row], settings: dict, extra: dict) -> dict:
    """The manifest of a job: its settings (what decides every output's pixels), and each output with the
    input it comes from (name, size and content tag), fingerprinted together."""
    settings = {"job": job, "kind": kind, "checkpoint_sha256": hashlib.sha256(checkpoint).hexdigest(),
                "image_policy": IMAGE_POLICY, **settings}
    outputs = {row.out: [row.name, row.item.size, row.item.tag] if row.item else [row.name] for row in plan}
    fingerprint = hashlib.sha256(json.dumps([settings, outputs], sort_keys=True).encode()).hexdigest()
    # when each local input's tag was taken (outside the fingerprint: a copied folder is still the same job), so
    # a rerun digests only the files that changed since (gan.io.sources.scan_inputs)
    stats = {row.item.key: [row.item.stat, row.item.tag] for row in plan if row.item and row.item.stat}
    return {"job": job, "fingerprint": fingerprint, "settings": settings, "outputs": outputs, **extra,
            **({"input_stats": stats} if stats else {})}


def known_inputs(manifest: dict | None) -> dict[str, tuple[str, str]]:
    """{input key: (stat, tag)} of the local inputs an earlier run of a job in this folder tagged."""
    stats = (manifest or {}).get("input_stats")
    if not isinstance(stats, dict):
        return {}
    return {k: (v[0], v[1]) for k, v in stats.items() if isinstance(v, list) and len(v) == 2}


def read_manifest(storage: Storage) -> dict | None:
    """The folder's manifest, or None when it has none; one that cannot be read counts as another job's."""
    if not storage.exists(MANIFEST):
        return None
    try:
        return parse_manifest(storage.read(MANIFEST))
    except StorageError:
        return {"unreadable": True}


def parse_manifest(data: bytes | None) -> dict | None:
    """A manifest's bytes as a dict (None for no manifest); bytes that are not one count as another job's."""
    if data is None:
        return None
    try:
        manifest = json.loads(data)
    except ValueError:
        return {"unreadable": True}
    return manifest if isinstance(manifest, dict) else {"unreadable": True}


def _entry(value) -> list:
    return value if isinstance(value, list) else [value]  # manifests before the contract: {output: name}


def _names(items: list[str]) -> str:
    return ", ".join(sorted(items)[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def differences(old: dict, new: dict) -> list[str]:
    """What makes `new` another job than `old`, in words: changed settings, then changed, added, removed inputs."""
    if "settings" not in old:
        return ["written by an older version, without a job contract"]
    out = []
    for key in sorted(set(old["settings"]) | set(new["settings"])):
        a, b = old["settings"].get(key), new["settings"].get(key)
        if a != b:
            label = "checkpoint" if key == "checkpoint_sha256" else key.replace("_", " ")
            short = (lambda v: str(v)[:12]) if key == "checkpoint_sha256" else str
            out.append(f"{label} {short(a)} -> {short(b)}")
    before = {_entry(v)[0]: _entry(v)[1:] for v in old["outputs"].values()}
    after = {_entry(v)[0]: _entry(v)[1:] for v in new["outputs"].values()}
    changed = [n for n in after if n in before and before[n] != after[n]]
    for what, names in (("changed", changed), ("added", [n for n in after if n not in before]),
                        ("removed", [n for n in before if n not in after])):
        if names:
            out.append(f"{len(names)} input{'s' if len(names) > 1 else ''} {what} ({_names(names)})")
    return out or ["outputs named differently"]


def check_same_job(storage: Storage, old: dict | None, new: dict, planned: list[str], existing: set[str]) -> None:
    """Raise JobMismatchError unless the folder holds this same job, or nothing this job would write."""
    hint = "rerun with --overwrite to replace its outputs, or give another --output"
    if old is None:
        foreign = [key for key in planned if key in existing]
        if foreign:
            raise JobMismatchError(f"{storage.uri}: already holds {len(foreign)} of this job's output names "
                                   f"({_names(foreign)}) but no {MANIFEST} says which job wrote them; {hint}")
        return
    if old.get("fingerprint") != new["fingerprint"]:
        what = "; ".join(differences(old, new)) if "unreadable" not in old else f"its {MANIFEST} is unreadable"
        raise JobMismatchError(f"{storage.uri}: holds a different {old.get('job', 'batch')} job ({what}); {hint}")


def clear_outputs(storage: Storage, old: dict | None, planned: list[str], existing: set[str]) -> int:
    """--overwrite: delete the old job's outputs, its report and manifest, and any file under a planned name."""
    doomed = set(planned) | ({*old.get("outputs", {}), REPORT, MANIFEST} if old else set())
    doomed &= existing
    for key in sorted(doomed):
        storage.delete(key)
    return len(doomed)


def manifest_outputs(storage: Storage) -> list[str] | None:
    """The outputs a finished job owns (its manifest's, less inputs its report rejected), or None without a
    manifest. Raises StorageError when some are missing: the job has not finished."""
    manifest = read_manifest(storage)
    if manifest is None or "unreadable" in manifest:
        return None
    rejected: set[str] = set()
    if storage.exists(REPORT):
        rejected = {r["name"] for r in json.loads(storage.read(REPORT)).get("rejected", [])}
    keys = sorted(out for out, entry in manifest.get("outputs", {}).items() if _entry(entry)[0] not in rejected)
    present = set(storage.list())
    missing = [k for k in keys if k not in present]
    if missing:
        raise StorageError(f"{storage.uri}: {len(missing)} outputs of its job are missing ({_names(missing)}): "
                           "rerun the job to finish it")
    return keys
