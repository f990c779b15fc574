"""Hyperparameter search with Ray Tune over our own training loop, on the score measured during training.

Ray Train V2 has no `Tuner(trainer)`: each trial is a small driver function that builds a `TorchTrainer` for its
settings and calls `fit()`; `TuneReportCallback` forwards every epoch's metrics (MiFID included) to Tune, where
ASHA decides which trials go on. Each trial's training run is named after
the trial and checkpoints into the search's storage, so a search rerun with the same name restores the Tune
experiment and every unfinished trial continues from its last epoch checkpoint.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from PIL import Image, ImageDraw

from gan.io.storage import open_storage, read_uri, write_uri
from gan.models.registry import get_model
from gan.train.loop import (BEST_FILE, BEST_SAMPLES_FILE, GENERATOR_FILE, HISTORY_FILE, SAMPLES_FILE,
                            TrainSettings, check_settings,
                            make_trainer, storage_args, worker_count)
from gan.train.quality import SCORE, line_plot

DOMAINS = ("choice", "uniform", "loguniform", "randint", "quniform")
REPORT_JSON, REPORT_MD, SAMPLES_PNG, CURVES_PNG, BEST_GENERATOR = (
    "report.json", "report.md", "samples.png", "curves.png", "best_generator.pt")


class SearchError(ValueError):
    """A search space or setting that cannot be searched; the message names the key."""


@dataclass
class SearchOptions:
    trials: int = 8
    time_budget_s: float | None = None
    scheduler: str = "asha"
    gpus_per_trial: float = 0.0        # per training worker: 0.25 puts four trials on one GPU
    max_concurrent: int | None = None  # default: as many as the cluster's CPUs or GPUs hold
    grace_epochs: int = 1              # ASHA: epochs every trial gets before it can be stopped


def parse_space(space: dict, allowed: set[str]) -> dict:
    """YAML search space -> Tune domains. A value is fixed, or one of {choice: [...]}, {uniform: [lo, hi]},
    {loguniform: [lo, hi]}, {randint: [lo, hi]}, {quniform: [lo, hi, q]}."""
    from ray import tune
    out = {}
    for key, value in space.items():
        if key not in allowed:
            raise SearchError(f"search space: unknown setting {key!r} (one of: {', '.join(sorted(allowed))})")
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in DOMAINS:
                raise SearchError(f"search space: {key}: expected one of {DOMAINS} as its only key, got {value}")
            kind, args = next(iter(value.items()))
            try:
                out[key] = tune.choice(list(args)) if kind == "choice" else getattr(tune, kind)(*args)
            except (TypeError, ValueError) as e:
                raise SearchError(f"search space: {key}: {kind} {args}: {e}") from None
        else:
            out[key] = value
    return out


def trial_settings(base: TrainSettings, config: dict) -> TrainSettings:
    """The base settings with a trial's sampled values: run settings by name, the rest into model_config."""
    run_fields = {f for f in asdict(base) if f != "model_config"}
    run = {k: v for k, v in config.items() if k in run_fields}
    model = {**base.model_config, **{k: v for k, v in config.items() if k not in run_fields}}
    return replace(base, **run, model_config=model)


def run_trial(config: dict) -> None:
    """One Tune trial: its own Ray Train run (named after the trial, so a restored search resumes it)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback
    ctx = ray.tune.get_context()
    base = TrainSettings(**config.pop("__base__"))
    storage = config.pop("__storage__")
    settings = trial_settings(base, config)
    make_trainer(settings, ctx.get_trial_id(), storage, callbacks=[TuneReportCallback()]).fit()


def _scheduler(opts: SearchOptions, epochs: int):
    """ASHA: stop trials whose score trails the others' at grace, 2 x grace, 4 x grace, ... epochs."""
    from ray.tune.schedulers import ASHAScheduler
    if opts.scheduler != "asha":
        raise SearchError(f"scheduler must be asha, got {opts.scheduler!r}")
    max_t = max(1, epochs - 1)  # "epoch" counts from 0
    return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(max(1, opts.grace_epochs), max_t),
                         reduction_factor=2)


def concurrency(base: TrainSettings, opts: SearchOptions) -> int:
    """How many trials fit the cluster at once (each trial's workers at their own resources)."""
    import ray
    res = ray.cluster_resources()
    workers = worker_count(base)
    workers = workers[1] if isinstance(workers, tuple) else workers
    if opts.gpus_per_trial > 0:
        return max(1, int(res.get("GPU", 0) / (opts.gpus_per_trial * workers) + 1e-9))
    return max(1, int(res.get("CPU", 1) / (base.cpus_per_worker * workers) + 1e-9))


def run_search(base: TrainSettings, space: dict, opts: SearchOptions, name: str, storage: str) -> dict:
    """Search (or continue the search of the same name), then write and return the comparison report."""
    from ray import tune

    from gan.ray_runtime import ensure_ray
    if base.eval_photos <= 0:
        raise SearchError("a search needs the in-training score: --eval-photos must be > 0")
    base = replace(base, eval_every=1)
    if opts.gpus_per_trial > 0:
        base = replace(base, use_gpu=True, gpus_per_worker=opts.gpus_per_trial)
    domains = parse_space(space, _allowed(base))
    sample = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in domains.items()}
    base = check_settings(base)
    trial_settings(base, sample).build_model_config()  # a sampled trial's sizes: fail here, not in every trial
    ensure_ray()
    root = f"{storage.rstrip('/')}/{name}"
    trials_storage = f"{root}/trials"
    param_space = {**domains, "__base__": asdict(base), "__storage__": trials_storage}
    # the trial is only a driver (it waits on its TorchTrainer); the training workers ask for their own resources
    trainable = tune.with_resources(run_trial, {"CPU": 0.05})
    where = storage_args(root)  # Tune's experiment state beside the trials: local or s3://
    path = f"{where['storage_path'].rstrip('/')}/tune"
    fs = where.get("storage_filesystem")
    started = time.monotonic()
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
        resumed = True
    else:
        scheduler = _scheduler(opts, base.epochs)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=SCORE, mode="min", scheduler=scheduler, num_samples=opts.trials,
                                        max_concurrent_trials=opts.max_concurrent or concurrency(base, opts),
                                        time_budget_s=opts.time_budget_s,
                                        reuse_actors=False),  # a stopped trial's actor dies, and its Train run
                                                              # (controller and workers) with it
            run_config=tune.RunConfig(name="tune", verbose=0, **where),
        )
        resumed = False
    results = tuner.fit()
    return comparison(results, root, time.monotonic() - started, resumed)


def _allowed(base: TrainSettings) -> set[str]:
    model_fields = {f.name for f in fields(get_model(base.model).config)}
    run_fields = {f for f in asdict(base) if f not in ("model_config", "photos", "paintings", "model",
                                                       "eval_every", "eval_photos", "eval_features")}
    return model_fields | run_fields


# --- the comparison ---------------------------------------------------------------------------------

def comparison(results, root: str, seconds: float, resumed: bool) -> dict:
    """Rank the trials by their best score; write report.json, report.md, samples.png, curves.png and the best
    trial's generator beside the trials."""
    trials = []
    for r in results:
        df = r.metrics_dataframe
        rows = [] if df is None else df.to_dict("records")
        ckpt_dir = next((_uri(h["checkpoint_path"], root) for h in reversed(rows)
                         if isinstance(h.get("checkpoint_path"), str)), None)
        # the run's own history (every epoch, also those before a resumed search) is the record; Tune's rows
        # only cover what this Tune session saw
        if ckpt_dir and open_storage(ckpt_dir).exists(HISTORY_FILE):
            rows = json.loads(open_storage(ckpt_dir).read(HISTORY_FILE))
        history = [h for h in rows if SCORE in h and h[SCORE] == h[SCORE]]  # NaN: epochs not scored
        if not history:
            continue
        best = min(history, key=lambda h: h[SCORE])
        config = {k: v for k, v in r.config.items() if not k.startswith("__")}
        trials.append({
            "trial": str(r.metrics.get("trial_id") or Path(r.path or "?").name),
            SCORE: best[SCORE], "fid": best.get("fid"), "best_epoch": int(best["epoch"]) + 1,
            "epochs": int(max(h["epoch"] for h in history)) + 1,
            "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
            "images_per_s": round(sum(h.get("images_per_s", 0.0) for h in history) / len(history), 2),
            "stopped_early": None, "settings": config,
            "curve": [[int(h["epoch"]) + 1, h[SCORE]] for h in history], "checkpoint": ckpt_dir,
        })
    trials.sort(key=lambda t: t[SCORE])
    longest = max((t["epochs"] for t in trials), default=0)
    for rank, t in enumerate(trials, 1):
        t["rank"], t["stopped_early"] = rank, t["epochs"] < longest
    out = open_storage(root)
    report = {"trials": trials, "seconds": round(seconds, 1), "resumed": resumed, "score": SCORE,
              "best": trials[0] if trials else None}
    if trials and trials[0]["checkpoint"]:
        best_dir = open_storage(trials[0]["checkpoint"])
        generator = best_dir.read(BEST_FILE) if best_dir.exists(BEST_FILE) else best_dir.read(GENERATOR_FILE)
        out.write(BEST_GENERATOR, generator)
        report["best_generator"] = f"{root}/{BEST_GENERATOR}"
        out.write(SAMPLES_PNG, samples_png([(t, open_storage(t["checkpoint"])) for t in trials[:6] if t["checkpoint"]]))
    out.write(CURVES_PNG, curves_png({f"#{t['rank']} {t['trial']}": t["curve"] for t in trials[:8]}))
    out.write(REPORT_JSON, json.dumps(report, indent=1, default=str).encode())
    out.write(REPORT_MD, markdown(report).encode())
    return report


def _uri(path: str, root: str) -> str:
    """A Train checkpoint path as our storage opens it (Train names S3 paths without their scheme)."""
    return f"s3://{path}" if root.startswith("s3://") and not path.startswith("s3://") else path


def markdown(report: dict) -> str:
    lines = [f"# Search report ({len(report['trials'])} trials, {report['seconds']:.0f} s)", "",
             f"Ranked by the best {SCORE} measured during training (lower is better).", "",
             f"| rank | trial | {SCORE} | FID | best epoch | epochs run | stopped early | train s | images/s | settings |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in report["trials"]:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(t["settings"].items()))
        lines.append(f"| {t['rank']} | {t['trial']} | {t[SCORE]:.2f} | {t['fid']:.2f} | {t['best_epoch']} | "
                     f"{t['epochs']} | {'yes' if t['stopped_early'] else 'no'} | {t['train_seconds']} | "
                     f"{t['images_per_s']} | {settings} |")
    if report.get("best_generator"):
        lines += ["", f"Best generator: `{report['best_generator']}` (loads in jobs.stylize and Serve)."]
    return "\n".join(lines) + "\n"


def samples_png(trials: list[tuple[dict, object]]) -> bytes:
    """Each top trial's best-epoch samples (the same fixed photos in every trial), one labelled row each."""
    rows = []
    for t, storage in trials:
        name = BEST_SAMPLES_FILE if storage.exists(BEST_SAMPLES_FILE) else SAMPLES_FILE
        if storage.exists(name):
            rows.append((f"#{t['rank']} {t['trial']}  {SCORE} {t[SCORE]:.2f}", Image.open(io.BytesIO(storage.read(name))).convert("RGB")))
    width = max((img.width for _, img in rows), default=320)
    sheet = Image.new("RGB", (width, sum(img.height + 18 for _, img in rows) or 40), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for label, img in rows:
        draw.text((4, y + 3), label, fill="black")
        sheet.paste(img, (0, y + 18))
        y += img.height + 18
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


def curves_png(series: dict[str, list[list[float]]]) -> bytes:
    """Each trial's score per epoch, one coloured line each, with a legend."""
    return line_plot(series, f"{SCORE} per epoch by trial (lower is better)", 720, 400)


def export_best(report: dict, target: str) -> None:
    best = report.get("best_generator")
    if not best:
        raise SearchError("no trial recorded a score: nothing to export")
    write_uri(target, read_uri(best))


__all__ = ["SearchOptions", "SearchError", "parse_space", "trial_settings", "run_search", "export_best"]
