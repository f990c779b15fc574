"""The quality table, every row measured here in one run: the photos themselves, the colour-transfer peer (what a
user gets without training), and each generator given, on the project's measure.

python bench/quality_peers.py --data ../shared/data/gan-getting-started [--generator NAME=G.pt ...] [--count 1500]

The measure: the first --count photos in name order (1,500), stylized (by `jobs.stylize`'s code for a generator),
scored by `jobs.evaluate`'s code against the paintings (monet_jpg, also the memorization reference) with the FID
Inception: MiFID, FID, KID and the memorization distance d, plus the gap closed, (photos - row) / (photos -
real), where "real" is what real Monet paintings outside the 240 score on this measure (REAL_MONET, from the
developers' guide: the 60 held-out paintings are not in the data here). Writes quality.md, quality.json and
compare.png (the same 8 photos, one row per method) into --workdir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gan.batch.engine import BatchOptions  # noqa: E402
from gan.batch.stylize import stylize  # noqa: E402
from gan.eval.evaluate import EvalOptions, evaluate  # noqa: E402
from gan.io.images import decode_image, encode_jpeg, to_pixels, to_tensor  # noqa: E402
from gan.io.storage import open_storage  # noqa: E402
from gan.models.colour import ColourTransfer, target_stats  # noqa: E402
from gan.pictures import labelled_rows  # noqa: E402
from gan.ray_runtime import set_verbose  # noqa: E402

REAL_MONET = 73.0   # MiFID of real Monet paintings outside the 240 on this measure (the developers' guide)
SHEET_PHOTOS = 8    # the picture's photos: evenly spaced through the scored ones, the same in every run


def first_photos(photos: Path, count: int, into: Path) -> list[Path]:
    """The first `count` photos in name order, as links in `into` (a folder the jobs can read)."""
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = into / name
        if not link.exists():
            os.symlink(photos / name, link)
    return [into / n for n in names]


def colour_transfer(photos: list[Path], paintings: Path, out: Path, batch: int = 32) -> float:
    """Reinhard's transfer of every photo to the paintings' average Lab statistics; JPEGs as the jobs write
    them. Returns the seconds it took (fitting the target included)."""
    start = time.monotonic()
    art = [p for p in sorted(paintings.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    images = torch.stack([to_tensor(decode_image(p.read_bytes(), p.name)) for p in art])
    transfer = ColourTransfer()
    transfer.set_target(*target_stats(images))
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for i in range(0, len(photos), batch):
            chunk = photos[i:i + batch]
            x = torch.stack([to_tensor(decode_image(p.read_bytes(), p.name)) for p in chunk])
            for p, pixels in zip(chunk, to_pixels(transfer(x))):
                (out / (p.stem + ".jpg")).write_bytes(encode_jpeg(pixels))
    return time.monotonic() - start


def stylized(checkpoint: str, photos: Path, out: Path) -> float:
    """`jobs.stylize` of the photos (a rerun finds its outputs done); its seconds."""
    result = stylize(str(photos), BatchOptions(checkpoint=checkpoint, output=open_storage(str(out)), progress=False))
    return float(result.report["seconds"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="Kaggle layout: photo_jpg/ and monet_jpg/")
    p.add_argument("--count", type=int, default=1500)
    p.add_argument("--generator", action="append", default=[], metavar="NAME=G.pt",
                   help="a generator checkpoint to score beside the peers (repeat for more)")
    p.add_argument("--workdir", type=Path, default=Path("runs/quality"))
    p.add_argument("--skip-photos", action="store_true", help="leave out the photos' row (its score is fixed)")
    p.add_argument("--only-generators", action="store_true", help="leave out both peers' rows (a quick check)")
    p.add_argument("--picture", type=Path, help="also draw the README's picture here: the 8 photos, the colour "
                                                "transfer's and the last --generator's of them, a PNG of a few "
                                                "hundred KB")
    args = p.parse_args(argv)
    set_verbose(False)
    work, paintings = args.workdir.resolve(), (args.data / "monet_jpg").resolve()
    photos = first_photos((args.data / "photo_jpg").resolve(), args.count, work / f"photos-{args.count}")
    rows: list[tuple[str, Path, float | None]] = []
    if not (args.skip_photos or args.only_generators):
        rows.append(("photos (no change)", photos[0].parent, None))
    if not args.only_generators:
        seconds = colour_transfer(photos, paintings, work / "colour-transfer")
        rows.append(("colour transfer (Reinhard, Lab)", work / "colour-transfer", seconds))
    for spec in args.generator:
        name, _, checkpoint = spec.partition("=")
        if not checkpoint:
            p.error(f"--generator {spec!r}: expected NAME=PATH")
        rows.append((name, work / name, stylized(str(Path(checkpoint).resolve()), photos[0].parent, work / name)))

    results = []
    for label, folder, secs in rows:
        r = evaluate(str(folder), str(paintings), None, EvalOptions(features="inception", progress=False))
        results.append({"row": label, "folder": str(folder), "mifid": r["mifid"], "fid": r["fid"], "kid": r["kid"],
                        "memorization": r["memorization_distance"], "images": r["counts"]["generated"],
                        "make_seconds": secs})
        print(f"{label}: MiFID {r['mifid']:.2f}, FID {r['fid']:.2f}, KID {r['kid'] * 1e3:.2f}e-3, "
              f"d {r['memorization_distance']:.3f}", flush=True)
    base = next((r["mifid"] for r in results if r["row"].startswith("photos")), None)
    lines = ["| images | MiFID | FID | KID x 10^3 | d | gap closed | seconds to make |", "|---|---|---|---|---|---|---|"]
    for r in results:
        r["gap_closed"] = None if base is None else (base - r["mifid"]) / (base - REAL_MONET)
        gap = "-" if r["gap_closed"] is None else f"{r['gap_closed']:.1%}"
        made = "-" if r["make_seconds"] is None else f"{r['make_seconds']:.0f}"
        lines.append(f"| {r['row']} | {r['mifid']:.2f} | {r['fid']:.2f} | {r['kid'] * 1e3:.2f} | "
                     f"{r['memorization']:.3f} | {gap} | {made} |")
    table = "\n".join(lines)
    print(table)
    (work / "quality.md").write_text(f"{args.count} photos vs {len(list(paintings.iterdir()))} paintings; gap closed "
                                     f"against real Monet at {REAL_MONET}\n\n{table}\n")
    (work / "quality.json").write_text(json.dumps(results, indent=1))
    picks = [photos[i * len(photos) // SHEET_PHOTOS] for i in range(SHEET_PHOTOS)]
    sheet = [(r["row"], [decode_image((Path(r["folder"]) / (q.stem + ".jpg" if "photos" not in r["row"] else q.name))
                                      .read_bytes(), q.name) for q in picks]) for r in results]
    (work / "compare.png").write_bytes(labelled_rows(sheet, size=160))
    print(f"wrote {work / 'quality.md'}, {work / 'compare.png'}")
    if args.picture and args.generator:
        photos_row = [decode_image(q.read_bytes(), q.name) for q in picks]
        peer = [images for label, images in sheet if label.startswith("colour transfer")]
        if not peer:  # not scored this run: the picture still shows it (the 8 photos only, seconds)
            colour_transfer(picks, paintings, work / "colour-transfer")
            peer = [[decode_image((work / "colour-transfer" / (q.stem + ".jpg")).read_bytes(), q.name)
                     for q in picks]]
        rows = [photos_row, *peer, sheet[-1][1]]  # photo / colour transfer (when measured) / ours
        args.picture.write_bytes(labelled_rows([("", r) for r in rows], size=160, label_width=0, colours=256))
        print(f"wrote {args.picture} ({args.picture.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
