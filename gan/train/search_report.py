"""A search's comparison: the trials ranked by their best in-training score, with their settings, curves and samples,
written beside the trials (report.json, report.md, samples.png, curves.png, best_generator.pt).

It reads each trial's own record (`records/<trial>.json`: its latest Train checkpoint and settings) and that
checkpoint's history, not Tune's results, which population-based training's restores blur.
"""
from __future__ import annotations

import json

from gan.io.storage import open_storage, read_uri, write_uri
from gan.pictures import score_curves, stacked
from gan.train.quality import BASELINE, SCORE
from gan.train.run_checkpoint import BEST_FILE, BEST_SAMPLES_FILE, GENERATOR_FILE, HISTORY_FILE, SAMPLES_FILE

REPORT_JSON, REPORT_MD, SAMPLES_PNG, CURVES_PNG, BEST_GENERATOR = (
    "report.json", "report.md", "samples.png", "curves.png", "best_generator.pt")
RECORDS_DIR = "records"  # beside the trials: one JSON per trial, its latest saved weights and their settings


class SearchError(ValueError):
    """A search space or setting that cannot be searched; the message names the key."""


def trial_of(run: str) -> str:
    """The trial a Train run belongs to: its own run is named by its id, the runs it starts from another
    trial's weights `<id>-from-<hash>`."""
    return run.split("-from-")[0]


def comparison(root: str, seconds: float, resumed: bool, scheduler: str = "asha") -> dict:
    """Rank the trials by their best score; write report.json, report.md, samples.png, curves.png and the best
    trial's generator beside the trials.

    Each trial's record names its latest Train checkpoint, whose history is the trial's curve: every epoch, also
    those before a resumed search and, under PBT, those of the trials whose weights it continued."""
    trials, baseline = [], None
    records = open_storage(f"{root}/{RECORDS_DIR}")
    for key in records.list():
        if not key.endswith(".json"):
            continue
        record = json.loads(records.read(key))
        trial_id, ckpt_dir = record["trial"], record["checkpoint"]
        rows = json.loads(open_storage(ckpt_dir).read(HISTORY_FILE))
        history = [h for h in rows if SCORE in h and h[SCORE] == h[SCORE]]  # NaN: epochs not scored
        if not history:
            continue
        # PBT: the other trials whose runs trained epochs of this trial's weights, in the order they did
        lineage = [trial_of(h["run"]) for h in rows if isinstance(h.get("run"), str)]
        donors = [t for t in dict.fromkeys(lineage) if t != trial_id]
        best = min(history, key=lambda h: h[SCORE])
        baseline = next((h[BASELINE] for h in history if h.get(BASELINE) is not None), baseline)
        trials.append({
            "trial": trial_id,
            SCORE: best[SCORE], "fid": best.get("fid"), "kid": best.get("kid"), "best_epoch": int(best["epoch"]) + 1,
            "epochs": int(max(h["epoch"] for h in history)) + 1,
            "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
            "images_per_s": round(sum(h.get("images_per_s", 0.0) for h in history) / len(history), 2),
            "stopped_early": None, "settings": record["settings"],
            "curve": [[int(h["epoch"]) + 1, h[SCORE]] for h in history], "checkpoint": ckpt_dir,
            "continued_from": donors,
        })
    trials.sort(key=lambda t: t[SCORE])
    longest = max((t["epochs"] for t in trials), default=0)
    for rank, t in enumerate(trials, 1):
        t["rank"], t["stopped_early"] = rank, t["epochs"] < longest
    out = open_storage(root)
    report = {"trials": trials, "seconds": round(seconds, 1), "resumed": resumed, "score": SCORE,
              "scheduler": scheduler, BASELINE: baseline,
              "best": trials[0] if trials else None}
    if trials and trials[0]["checkpoint"]:
        best_dir = open_storage(trials[0]["checkpoint"])
        generator = best_dir.read(BEST_FILE) if best_dir.exists(BEST_FILE) else best_dir.read(GENERATOR_FILE)
        out.write(BEST_GENERATOR, generator)
        report["best_generator"] = f"{root}/{BEST_GENERATOR}"
        out.write(SAMPLES_PNG, samples_png([(t, open_storage(t["checkpoint"])) for t in trials[:6] if t["checkpoint"]]))
    out.write(CURVES_PNG, curves_png({f"#{t['rank']} {t['trial']}": t["curve"] for t in trials[:8]}, baseline))
    out.write(REPORT_JSON, json.dumps(report, indent=1, default=str).encode())
    out.write(REPORT_MD, markdown(report).encode())
    return report


def markdown(report: dict) -> str:
    pbt = report.get("scheduler") == "pbt"  # PBT stops no trial; its trials continue others' weights instead
    column = "continued from" if pbt else "stopped early"
    settings_note = " (the last settings PBT gave it)" if pbt else ""
    lines = [f"# Search report ({len(report['trials'])} trials, {report.get('scheduler', 'asha')}, "
             f"{report['seconds']:.0f} s)", "",
             f"Ranked by the best {SCORE} measured during training (lower is better).", "",
             f"| rank | trial | {SCORE} | FID | best epoch | epochs run | {column} | train s | images/s | "
             f"settings{settings_note} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in report["trials"]:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(t["settings"].items()))
        how = ", ".join(t.get("continued_from") or []) or "-" if pbt else ("yes" if t["stopped_early"] else "no")
        lines.append(f"| {t['rank']} | {t['trial']} | {t[SCORE]:.2f} | {t['fid']:.2f} | {t['best_epoch']} | "
                     f"{t['epochs']} | {how} | {t['train_seconds']} | {t['images_per_s']} | {settings} |")
    if report.get("best_generator"):
        lines += ["", f"Best generator: `{report['best_generator']}` (loads in jobs.stylize and Serve)."]
    return "\n".join(lines) + "\n"


def samples_png(trials: list[tuple[dict, object]]) -> bytes:
    """Each top trial's best-epoch samples (the same fixed inputs in every trial), one labelled row each."""
    pictures = []
    for t, storage in trials:
        name = BEST_SAMPLES_FILE if storage.exists(BEST_SAMPLES_FILE) else SAMPLES_FILE
        if storage.exists(name):
            pictures.append((f"#{t['rank']} {t['trial']}  {SCORE} {t[SCORE]:.2f}", storage.read(name)))
    return stacked(pictures)


def curves_png(series: dict[str, list[list[float]]], baseline: float | None = None) -> bytes:
    """Each trial's score per epoch, one labelled line each, the unstylized photos' score as a reference."""
    return score_curves({label: [tuple(p) for p in points] for label, points in series.items()},
                        f"{SCORE} per epoch by trial (lower is better)", SCORE,
                        reference=("the photos themselves", baseline) if baseline is not None else None)


def export_best(report: dict, target: str) -> None:
    best = report.get("best_generator")
    if not best:
        raise SearchError("no trial recorded a score: nothing to export")
    write_uri(target, read_uri(best))
