"""Output names from untrusted input names: safe characters only, unique, and the same on every rerun."""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import PurePosixPath

MAX_STEM = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_stem(name: str) -> str:
    """The file stem of `name` with anything but [A-Za-z0-9._-] replaced: no separators, no '..', no hidden files."""
    leaf = PurePosixPath(name.replace("\\", "/")).name
    stem = leaf.rsplit(".", 1)[0] if "." in leaf.lstrip(".") else leaf
    stem = _UNSAFE.sub("_", stem).strip("._-")
    stem = re.sub(r"\.{2,}", ".", stem)
    if len(stem) > MAX_STEM:
        stem = f"{stem[:MAX_STEM]}-{_hash(name)}"
    return stem or f"image-{_hash(name)}"


def output_names(names: list[str], suffix: str = ".jpg") -> dict[str, str]:
    """{input name: output file name}. Names that would collide (x.jpg in two folders, x.png beside x.jpg)
    all get a hash of their full input name, so the mapping depends on the names alone, not on order."""
    stems = {n: safe_stem(n) for n in names}
    counts = Counter(s.lower() for s in stems.values())  # case-insensitive: safe on macOS/Windows disks too
    return {n: (s if counts[s.lower()] == 1 else f"{s}-{_hash(n)}") + suffix for n, s in stems.items()}
