"""MiFID evaluation of a folder, prefix or images.zip: features on Ray actors, the report, a contact sheet.

A zip is checked as a Kaggle submission (every member a 256x256 RGB JPEG) before its score counts;
folders are lenient and list unreadable files in the report.
"""
from __future__ import annotations

import bisect
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from gan.batch.pipeline import DecodeStage, Row, actor_plan, run_pipeline
from gan.eval.features import extract, make_extractor
from gan.io.images import IMAGE_SIZE, decode_image, to_tensor
from gan.eval.metrics import mifid
from gan.io.naming import safe_stem
from gan.pictures import grid_png
from gan.io.sources import InputItem, Rejected, is_zip, read_input, scan_uri
from gan.io.storage import Storage, split_uri
from gan.batch.submission import SubmissionError, check_count, check_submission_image


@dataclass
class EvalOptions:
    features: str = "inception"
    inception_weights: str | None = None
    batch_size: int = 32
    actors: int = 1
    cpus_per_actor: float | None = None
    progress: bool = True
    min_images: int = 1
    max_images: int = 10**9
    use_gpu: bool | None = None  # None: one feature actor per GPU when the cluster has GPUs, else a CPU actor


class FeatureActor:
    """Loads the extractor once per actor, on the actor's GPU when it has one; `pixels` in, `features` out."""

    def __init__(self, kind: str, weights: str | None, threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.extractor = make_extractor(kind, weights).to(self.device)

    def __call__(self, batch: dict) -> dict:
        ok = np.array([not e for e in batch["error"]], bool)
        if ok.any():
            f = extract(self.extractor, batch["pixels"][ok], self.device)
            feats = np.zeros((len(ok), f.shape[1]), np.float32)
            feats[ok] = f
        else:
            feats = np.zeros((len(ok), 1), np.float32)
        return {"row": batch["row"], "features": feats, "error": batch["error"]}


class DecodeSets(DecodeStage):
    """The decode stage of several image sets in one pipeline: the sets are planned one after another, so a row's
    index says its set, whose storage and check (a submission zip's) decode it."""

    def __init__(self, starts: list[int], stages: list[DecodeStage]):
        super().__init__(None, IMAGE_SIZE)
        self.starts, self.stages = starts, stages

    def set_of(self, row: Row) -> int:
        """The position of the row's set (an empty set's start equals the next one's: the later set wins)."""
        return bisect.bisect_right(self.starts, row.index) - 1

    def _decode(self, row: Row) -> np.ndarray:
        return self.stages[self.set_of(row)]._decode(row)


def features_of_sets(sets: dict[str, tuple[str, bool]], opts: EvalOptions
                     ) -> dict[str, tuple[list[str], np.ndarray, list[Rejected]]]:
    """{label: (names, (N, D) features, rejected)} of every image of each set {label: (uri, strict)}, all in one
    run of the shared batch pipeline: one pool of feature actors, so the extractor loads once, not once a set.

    `strict`: the set is a submission zip, so every member must be a 256x256 RGB JPEG and the count in range
    (checked in the order of `sets`: the count from the listing, before any features; the members as they are
    decoded, where any bad one fails the set, so a passing set's count is its listing's)."""
    rows: list[Row] = []
    starts, stages, rejected = [], [], {}
    for label, (uri, strict) in sets.items():
        items, rejected[label], storage = scan_uri(uri)  # every set is listed (and a bad one refused) first
        if strict:
            check_count(len(items), uri, opts.min_images, opts.max_images)
        starts.append(len(rows))
        stages.append(DecodeStage(storage, IMAGE_SIZE, check_submission_image if strict else None))
        rows += [Row(i.name, starts[-1] + n, item=i) for n, i in enumerate(items)]
    labels, decode = list(sets), DecodeSets(starts, stages)
    plan = actor_plan(opts.actors, opts.cpus_per_actor, opts.use_gpu)
    results = run_pipeline(
        rows, FeatureActor, {"kind": opts.features, "weights": opts.inception_weights}, plan, opts.batch_size,
        decode=decode, label=f"features[{', '.join(labels)}]", progress=opts.progress,
        decode_in_actor=plan.gpus == 0)
    names: dict[str, list[str]] = {label: [] for label in labels}
    feats: dict[str, list[np.ndarray]] = {label: [] for label in labels}
    for batch in results:
        for row, f, err in zip(batch["row"], batch["features"], batch["error"]):
            label = labels[decode.set_of(row)]
            if err:
                rejected[label].append(Rejected(row.name, str(err)))
            else:
                names[label].append(row.name)
                feats[label].append(f)
    found = {}
    for label, (uri, strict) in sets.items():
        if strict and rejected[label]:
            first = "; ".join(r.reason for r in rejected[label][:3])
            raise SubmissionError(f"{uri}: {len(rejected[label])} invalid images ({first})")
        if len(names[label]) < 2:
            raise ValueError(f"{uri}: need at least 2 readable images, found {len(names[label])}")
        order = np.argsort(names[label])
        found[label] = ([names[label][i] for i in order], np.stack(feats[label])[order],
                        sorted(rejected[label], key=lambda r: r.name))
    return found


def features_of(uri: str, opts: EvalOptions, label: str, strict: bool = False
                ) -> tuple[list[str], np.ndarray, list[Rejected]]:
    """(names, (N, D) features, rejected) of every image at `uri` (`features_of_sets` of one set)."""
    return features_of_sets({label: (uri, strict)}, opts)[label]


def contact_sheet(generated_uri: str, photos: tuple[list[InputItem], Storage] | None = None, n: int = 8) -> bytes:
    """A grid: photos (their listing: items, storage) over their stylized versions (matched by name) when photos
    are given, else samples."""
    items, _, storage = scan_uri(generated_uri)
    items = items[:64]
    gen = []
    for item in items:
        try:
            gen.append((safe_stem(item.name), to_tensor(decode_image(read_input(storage, item), item.name, IMAGE_SIZE))))
        except ValueError:
            continue
    pairs = []
    if photos:
        p_items, p_storage = photos
        by_stem = {safe_stem(i.name): i for i in p_items}
        for stem, g in gen:
            if stem in by_stem and len(pairs) < n:
                photo = decode_image(read_input(p_storage, by_stem[stem]), stem, IMAGE_SIZE)
                pairs.append((to_tensor(photo), g))
    if pairs:
        return grid_png(torch.stack([p for p, _ in pairs] + [g for _, g in pairs]), nrow=len(pairs))
    return grid_png(torch.stack([g for _, g in gen[:2 * n]]), nrow=n)


def report_location(generated_uri: str, report_uri: str | None) -> tuple[Storage, str, str]:
    """(storage, report name, contact sheet name): beside the zip or the folder, never inside what is scored
    (`out/` -> `out.evaluation.json`, `out.contact_sheet.png` next to it)."""
    if report_uri:
        storage, name = split_uri(report_uri)
        return storage, name, name.rsplit(".", 1)[0] + "_contact_sheet.png"
    storage, name = split_uri(generated_uri)
    return storage, f"{name}.evaluation.json", f"{name}.contact_sheet.png"


def evaluate(generated: str, real: str, train: str | None, opts: EvalOptions, photos: str | None = None,
             report_uri: str | None = None) -> dict:
    start = time.monotonic()
    storage, report_name, sheet_name = report_location(generated, report_uri)  # a bad place fails first
    extractor = make_extractor(opts.features, opts.inception_weights).name  # missing weights fail here, first
    photo_listing = None
    if photos:  # listed now: a bad --photos fails here too, not after the features
        photo_items, _, photo_storage = scan_uri(photos)
        photo_listing = (photo_items, photo_storage)
    sets = {"generated": (generated, is_zip(generated)), "real": (real, False)}
    if train and train != real:
        sets["train"] = (train, False)
    found = features_of_sets(sets, opts)
    (g_names, g_feats, g_rej), (r_names, r_feats, r_rej) = found["generated"], found["real"]
    t_names, t_feats, _ = found.get("train", found["real"])
    scores = mifid(g_feats, r_feats, t_feats)
    report = {
        "generated": generated, "real": real, "train": train or real,
        "counts": {"generated": len(g_names), "real": len(r_names), "train": len(t_names),
                   "rejected": len(g_rej) + len(r_rej)},
        "extractor": extractor, "is_inception": opts.features == "inception",
        "fid": scores["fid"], "memorization_distance": scores["distance"],
        "distance_used": scores["distance_used"], "memorization_penalized": scores["memorization_penalized"],
        "epsilon": scores["epsilon"], "mifid": scores["mifid"], "kid": scores["kid"],
        "seconds": round(time.monotonic() - start, 2),
        "rejected": [{"name": r.name, "reason": r.reason} for r in g_rej + r_rej],
    }
    storage.write(sheet_name, contact_sheet(generated, photo_listing))
    report["contact_sheet"] = storage.child(sheet_name)
    storage.write(report_name, json.dumps(report, indent=1).encode())
    report["report"] = storage.child(report_name)
    return report


def summary_line(report: dict) -> str:
    label = "MiFID" if report["is_inception"] else "MiFID[stand-in features, not Kaggle's]"
    pen = "penalised" if report["memorization_penalized"] else "no penalty"
    return (f"{label} {report['mifid']:.3f} (FID {report['fid']:.3f}, KID {report['kid']:.5f}, memorization d "
            f"{report['memorization_distance']:.4f} -> {pen}) {report['counts']['generated']} generated vs {report['counts']['real']} real, "
            f"{report['extractor']}, {report['seconds']:.1f} s")
