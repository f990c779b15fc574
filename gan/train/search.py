"""Hyperparameter search with Ray Tune over our own training loop, on the score measured during training.

A trial of one worker trains in its own process (`fit_in_process`); of more, it drives a Ray Train run (Ray Train
V2 has no `Tuner(trainer)`). Either way every epoch's metrics (MiFID included) go to Tune with a Tune checkpoint
that names the epoch's run checkpoint. ASHA stops trials that trail; population-based training (PBT) hands the
best trials' weights to the worst with perturbed settings. Each trial's training run is named after the trial
and checkpoints into the search's storage, so a search rerun with the same name restores the Tune experiment
and every unfinished trial continues from its last epoch checkpoint. The comparison reads each trial's own record
(`records/<trial>.json`: its latest Train checkpoint and settings), not Tune's results, which PBT's restores blur.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gan.io.storage import open_storage
from gan.train.driver import fit_in_process, fit_with_epochs, storage_args
from gan.train.quality import SCORE
from gan.train.search_report import (BEST_GENERATOR, CURVES_PNG, RECORDS_DIR, REPORT_JSON, REPORT_MD, SAMPLES_PNG,
                                     SearchError, comparison, export_best, trial_of)
from gan.train.settings import (TrainSettings, check_settings, check_workers_placeable, per_worker_resources,
                                run_fields, searchable, worker_count)
from gan.train.worker import LoopHook

DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")


@dataclass
class SearchOptions:
    trials: int = 8
    time_budget_s: float | None = None
    scheduler: str = "asha"
    gpus_per_trial: float = 0.0        # per training worker: 0.25 puts four trials on one GPU
    max_concurrent: int | None = None  # default: as many as the cluster's CPUs or GPUs hold
    grace_epochs: int = 1              # ASHA: epochs every trial gets before it can be stopped
    perturbation_epochs: int = 1       # PBT: epochs between exploit/explore rounds


def parse_space(space: dict, allowed: set[str]) -> dict:
    """YAML search space -> Tune domains. A value is fixed, or one of {choice: [...]}, {grid: [...]} (every value,
    in order, in each of the search's samples), {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]},
    {quniform: [lo, hi, q]}."""
    from ray import tune
    out = {}
    for key, value in space.items():
        if key not in allowed:
            raise SearchError(f"search space: unknown setting {key!r} (one of: {', '.join(sorted(allowed))})")
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in DOMAINS:
                raise SearchError(f"search space: {key}: expected one of {DOMAINS} as its only key, got {value}")
            kind, args = next(iter(value.items()))
            if kind in ("choice", "grid") and (not isinstance(args, list) or not args):
                raise SearchError(f"search space: {key}: {kind} needs a non-empty list of values, got {args!r}")
            try:
                out[key] = (tune.choice(args) if kind == "choice" else tune.grid_search(args) if kind == "grid"
                            else getattr(tune, kind)(*args))
            except (TypeError, ValueError) as e:
                raise SearchError(f"search space: {key}: {kind} {args}: {e}") from None
        else:
            out[key] = value
    return out


def trial_settings(base: TrainSettings, config: dict) -> TrainSettings:
    """The base settings with a trial's sampled values: run settings by name, the rest into model_config."""
    run = {k: v for k, v in config.items() if k in run_fields()}
    model = {**base.model_config, **{k: v for k, v in config.items() if k not in run_fields()}}
    return replace(base, **run, model_config=model)


EPOCHS_DONE = "epochs_done"  # the schedulers' clock: 1 after the first epoch ("epoch" counts from 0)
POINTER_FILE = "train_checkpoint.json"  # a Tune checkpoint: where the trial's Train checkpoint of that epoch is
# what a population-based search may change while a trial trains (its sizes cannot: the weights carry on)
PBT_MUTABLE = ("lr", "lambda_cycle", "lambda_identity", "diffaugment", "ema")


def _own_run(trial_id: str, train_checkpoint: str) -> str | None:
    """The Train run name when a Tune checkpoint points into one of this trial's own runs (a restored search)."""
    run = Path(train_checkpoint.rstrip("/")).parent.name
    return run if trial_of(run) == trial_id else None


def in_process(settings: TrainSettings) -> bool:
    """A trial of one worker trains in the trial's own process (`fit_in_process`); of more, it drives a Ray
    Train run of its own."""
    return worker_count(settings) == 1


def run_trial(config: dict, hook: LoopHook | None = None) -> None:
    """One Tune trial: its training run (in this process, or a Ray Train run it drives), each epoch's metrics
    forwarded to Tune.

    Each epoch's report carries a small Tune checkpoint that names the run checkpoint of that epoch. A trial
    restored with its own checkpoint (an interrupted search, rerun) continues its run; a trial handed another
    trial's checkpoint (population-based training's exploit) starts a new run from it with its new settings.
    `hook`: the training loop's fault injection, from tests.
    """
    import ray.tune
    trial_id = ray.tune.get_context().get_trial_id()
    base = TrainSettings(**config.pop("__base__"))
    storage, records = config.pop("__storage__"), open_storage(config.pop("__records__"))
    settings = trial_settings(base, config)
    name, start_from = trial_id, None
    reported = None  # the Train checkpoint that Tune last saw for this trial
    tune_checkpoint = ray.tune.get_checkpoint()
    if tune_checkpoint is not None:
        with tune_checkpoint.as_directory() as d:
            pointer = json.loads((Path(d) / POINTER_FILE).read_text())
        if pointer.get("epoch", -1) + 1 >= settings.epochs:
            return  # handed a finished trial's last checkpoint (PBT's last round): nothing is left to train
        reported = start_from = pointer["path"]
        own = _own_run(trial_id, pointer["path"])
        if own:
            # a Ray Train run finds its own latest checkpoint; in this process the run continues from the one Tune
            # saw last (an epoch saved after it, which Tune never saw, is trained again)
            name, start_from = own, (start_from if in_process(settings) else None)
        else:
            name = f"{trial_id}-from-{hashlib.sha1(start_from.encode()).hexdigest()[:8]}"

    def forward(m: dict) -> None:
        nonlocal reported
        path = m.pop("checkpoint")
        if path:  # the record first: Tune may pause or stop the trial (kill its process) while it reports
            path = reported = _uri(path, storage)
            _write_record(records, trial_id, path, config)
        _report(m, path, trial_id)

    if in_process(settings):
        stopped = fit_in_process(settings, name, storage, forward, start_from=start_from, hook=hook)
        if stopped:
            raise SearchError(stopped["error"])
        return
    result = fit_with_epochs(settings, name, storage, forward, hook=hook, start_from=start_from, lockstep=True)
    if isinstance(result.return_value, dict) and result.return_value.get("error"):
        raise SearchError(result.return_value["error"])
    latest = result.checkpoint and _uri(result.checkpoint.path, storage)
    if latest and latest != reported and result.metrics:
        # the search was interrupted after Train's last checkpoint but before Tune recorded it: the rejoined run
        # had nothing left to train, so its last epoch is reported now
        _write_record(records, trial_id, latest, config)
        _report(dict(result.metrics), latest, trial_id)


def _write_record(records, trial_id: str, checkpoint: str, config: dict) -> None:
    """The trial's own record, which the comparison reads: its latest saved weights and the settings they trained
    with. Not Tune's view of the trial: a trial PBT restores from another's checkpoint takes that trial's last
    result as its own, and Tune's per-trial result files can lose rows or columns when a trial is restarted."""
    record = {"trial": trial_id, "checkpoint": checkpoint, "settings": config}
    records.write(f"{trial_id}.json", json.dumps(record, default=str).encode())


def _report(m: dict, path: str | None, trial_id: str) -> None:
    """One epoch to Tune (its metrics name the run that trained it); with a Train checkpoint, a Tune checkpoint
    naming it."""
    import tempfile

    import ray.tune
    metrics = {**m, EPOCHS_DONE: m["epoch"] + 1}
    if not path:
        ray.tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / POINTER_FILE).write_text(json.dumps({"path": path, "trial": trial_id, "epoch": m["epoch"]}))
        ray.tune.report({**metrics, "checkpoint_path": path}, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def _grid(domain) -> list | None:
    """A grid's values (Tune's `grid_search` is a plain dict), else None."""
    return domain["grid_search"] if isinstance(domain, dict) and "grid_search" in domain else None


def _samples(domains: dict) -> list[dict]:
    """Trials to check before the search: one sampled, and one more for each further value of each grid."""
    first = {k: (v.sample() if hasattr(v, "sample") else _grid(v)[0] if _grid(v) else v) for k, v in domains.items()}
    return [first] + [{**first, k: value} for k, v in domains.items() for value in (_grid(v) or [])[1:]]


def _scheduler(opts: SearchOptions, epochs: int, domains: dict):
    """ASHA: stop trials whose score trails the others' at grace, 2 x grace, 4 x grace, ... epochs.
    PBT: every `perturbation_epochs`, once every trial got there, the worst quarter continue the best quarter's
    weights with their settings perturbed (x0.8 / x1.2, or a neighbouring choice; a quarter of the time resampled).
    Synchronous, because a GAN's score moves with its epoch: trials ahead would otherwise look better."""
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    if opts.scheduler == "asha":
        return ASHAScheduler(time_attr=EPOCHS_DONE, max_t=epochs, grace_period=min(max(1, opts.grace_epochs), epochs),
                             reduction_factor=2)
    if opts.scheduler == "pbt":
        mutations = {k: v for k, v in domains.items() if hasattr(v, "sample")}
        return PopulationBasedTraining(time_attr=EPOCHS_DONE, perturbation_interval=max(1, opts.perturbation_epochs),
                                       hyperparam_mutations=mutations, quantile_fraction=0.25,
                                       resample_probability=0.25, log_config=False,
                                       synch=True)  # trials compared at the same epoch, as the paper's A.1
    raise SearchError(f"scheduler must be asha or pbt, got {opts.scheduler!r}")


def _check_pbt_space(domains: dict) -> None:
    """PBT continues one trial's weights with another's settings: only settings that leave the networks' shapes
    as they are may vary, and at least one must."""
    grids = [k for k, v in domains.items() if _grid(v)]
    if grids:
        raise SearchError(f"search space: {', '.join(grids)}: PBT perturbs the values it samples; give "
                          f"{{choice: [...]}}, not a grid")
    varied = [k for k, v in domains.items() if hasattr(v, "sample")]
    fixed_only = [k for k in varied if k not in PBT_MUTABLE]
    if fixed_only:
        raise SearchError(f"search space: {', '.join(fixed_only)} cannot change while a trial trains (PBT hands "
                          f"one trial's weights to another): fix it under base:, or use --scheduler asha; PBT "
                          f"varies {', '.join(PBT_MUTABLE)}")
    if not varied:
        raise SearchError(f"search space: PBT needs at least one of {', '.join(PBT_MUTABLE)} to vary")


def concurrency(base: TrainSettings, opts: SearchOptions) -> int:
    """How many trials fit the cluster at once (each trial's workers at their own resources)."""
    import ray
    res = ray.cluster_resources()
    workers = worker_count(base)
    workers = workers[1] if isinstance(workers, tuple) else workers
    if opts.gpus_per_trial > 0:
        return max(1, int(res.get("GPU", 0) / (opts.gpus_per_trial * workers) + 1e-9))
    return max(1, int(res.get("CPU", 1) / (base.cpus_per_worker * workers) + 1e-9))


def run_search(base: TrainSettings, space: dict, opts: SearchOptions, name: str, storage: str,
               hook: LoopHook | None = None) -> dict:
    """Search (or continue the search of the same name), then write and return the comparison report. `hook`:
    the trials' training loops' fault injection (`LoopHook`), from tests."""
    from ray import tune

    from gan.ray_runtime import ensure_ray
    if base.eval_photos <= 0:
        raise SearchError("a search needs the in-training score: --eval-photos must be > 0")
    base = replace(base, eval_every=1)
    if opts.gpus_per_trial > 0:
        base = replace(base, use_gpu=True, gpus_per_worker=opts.gpus_per_trial)
    domains = parse_space(space, searchable(base.model))
    if opts.scheduler == "pbt":
        _check_pbt_space(domains)
    base = check_settings(base)
    for sample in _samples(domains):  # a trial's sizes: fail here, not in every trial
        trial_settings(base, sample).build_model_config()
    ensure_ray()
    check_workers_placeable(base)
    root = f"{storage.rstrip('/')}/{name}"
    trials_storage = f"{root}/trials"
    param_space = {**domains, "__base__": asdict(base), "__storage__": trials_storage,
                   "__records__": f"{root}/{RECORDS_DIR}"}
    # a trial of one worker is that worker; a larger one only drives its Ray Train run, whose workers ask for theirs
    trainable = tune.with_resources(tune.with_parameters(run_trial, hook=hook),
                                    per_worker_resources(base) if in_process(base) else {"CPU": 0.05})
    where = storage_args(root)  # Tune's experiment state beside the trials: local or s3://
    path = f"{where['storage_path'].rstrip('/')}/tune"
    fs = where.get("storage_filesystem")
    started = time.monotonic()
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
        resumed = True
    else:
        scheduler = _scheduler(opts, base.epochs, domains)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=SCORE, mode="min", scheduler=scheduler, num_samples=opts.trials,
                                        max_concurrent_trials=opts.max_concurrent or concurrency(base, opts),
                                        time_budget_s=opts.time_budget_s,
                                        reuse_actors=False),  # a stopped trial's actor dies, and its Train run
                                                              # (controller and workers) with it
            run_config=tune.RunConfig(name="tune", verbose=0, **where, failure_config=tune.FailureConfig(
                max_failures=base.max_failures if in_process(base) else 0)),  # else Ray Train retries the workers
        )
        resumed = False
    tuner.fit()
    return comparison(root, time.monotonic() - started, resumed, opts.scheduler)


def _uri(path: str, root: str) -> str:
    """A Train checkpoint path as our storage opens it (Train names S3 paths without their scheme)."""
    return f"s3://{path}" if root.startswith("s3://") and not path.startswith("s3://") else path


__all__ = ["SearchOptions", "SearchError", "parse_space", "trial_settings", "run_search", "export_best",
           "comparison", "REPORT_JSON", "REPORT_MD", "SAMPLES_PNG", "CURVES_PNG", "BEST_GENERATOR"]
