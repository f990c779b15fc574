"""The training driver: check the settings, start or join Ray, run Ray Train's `fit()` and print a line per epoch.

A rerun with the same name and storage continues from the run's latest checkpoint (Ray Train finds it). The
driver hears about each epoch through a small actor (`EpochChannel`) that a callback in Ray Train's controller
fills, and can hold the workers there before each next epoch (a gate): a search trial trains nothing that Tune has
not seen.
"""
from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Callable

from ray.train import UserCallback

import gan.io.storage as storage_module
from gan.io.storage import (StorageError, StorageFullError, StorageUnavailableError, arrow_filesystem, arrow_outage,
                            s3_endpoint)
from gan.train.epoch_channel import EpochChannel
from gan.train.quality import SCORE
from gan.train.run_checkpoint import InProcessCheckpoints
from gan.train.settings import (TrainSettings, check_settings, check_workers_placeable, per_worker_resources,
                                worker_count)
from gan.train.worker import LoopHook, TrainingError, train_loop_per_worker


def storage_args(storage: str) -> dict:
    """RunConfig's storage arguments: a local folder, or S3 through pyarrow as `gan.io.storage` configures it."""
    path, fs = arrow_filesystem(storage)
    return {"storage_path": path, **({"storage_filesystem": fs} if fs is not None else {})}


class EpochLines(UserCallback):
    """Runs in Ray Train's controller and sends each epoch's metrics to the driver through its `EpochChannel`.

    Workers' and the controller's own output stays in Ray's logs unless --verbose; this is how the
    driver still prints one line per epoch.
    """

    def __init__(self, channel):
        self.channel = channel

    def after_report(self, run_context, metrics, checkpoint) -> None:
        import ray  # waited on: every epoch is in the channel before fit() returns
        ray.get(self.channel.put.remote({**metrics[0], "checkpoint": checkpoint.path if checkpoint else None}))


def make_trainer(settings: TrainSettings, name: str, storage: str, hook: LoopHook | None = None,
                 callbacks: list | None = None, start_from: str | None = None, gate=None):
    """A TorchTrainer for checked settings (`check_settings`); the same name and storage resume.

    `start_from`: a checkpoint folder (local or s3://) of another run that a new run starts from, with its own
    settings (a population-based search's exploit); the run's own checkpoints, once it has one, win.
    `gate`: an `EpochChannel` that the workers wait on after each epoch but the last.
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": asdict(settings), "hook": hook, "start_from": start_from, "gate": gate,
                           "storage_retry_s": storage_module.RETRY_WINDOW_S},
        scaling_config=ray.train.ScalingConfig(num_workers=worker_count(settings), use_gpu=settings.use_gpu,
                                               resources_per_worker=per_worker_resources(settings)),
        run_config=ray.train.RunConfig(
            name=name, **storage_args(storage), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.keep_checkpoints)),
    )


def epoch_line(m: dict, epochs: int) -> str:
    losses = " ".join(f"{k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("loss_"))
    saved = ", checkpoint saved" if m.get("checkpoint") else ""
    score = ""
    if SCORE in m:
        label = SCORE if m["eval_features"] == "inception" else f"{SCORE}[{m['eval_features']} stand-in]"
        score = (f"  {label} {m[SCORE]:.2f} (FID {m['fid']:.2f}, KID {m['kid']:.4f}, d {m['memorization']:.3f}; "
                 f"best {m['best_' + SCORE]:.2f} @ epoch {m['best_epoch'] + 1})")
    peak = f", peak {m['peak_gpu_gib']:.1f} GiB" if "peak_gpu_gib" in m else ""
    damaged = "".join(f"train: skipped a damaged checkpoint: {d}\n" for d in m.get("damaged_checkpoints", []))
    return (f"{damaged}train: epoch {m['epoch'] + 1}/{epochs}  {losses}  {m['images_per_s']:.1f} images/s, "
            f"{m['seconds']:.1f} s{peak}{score}{saved}")


def fit_with_epochs(settings: TrainSettings, name: str, storage: str, on_epoch: Callable[[dict], None],
                    hook: LoopHook | None = None, start_from: str | None = None, lockstep: bool = False):
    """`fit()` a trainer for these settings in a thread while each epoch's metrics reach `on_epoch` here, in this
    thread and in order ("checkpoint": the epoch's Train checkpoint path, or None); the Result, or what fit() raised.

    In the calling thread because a Tune trial must report from its own thread; the driver prints from it.
    `lockstep`: the workers start an epoch only once `on_epoch` has returned for the one before. A Tune trial's
    report returns when Tune lets the trial go on, so a trial that Tune stops or pauses (ASHA, or PBT waiting for
    the others) trains no epoch past the last one Tune saw: PBT's rounds stay synchronous and no work is wasted.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    # on this node, as Ray Train puts its controller: a channel on a worker node would die with that node
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    channel = ray.remote(EpochChannel).options(num_cpus=0, scheduling_strategy=here).remote()
    trainer = make_trainer(settings, name, storage, hook, callbacks=[EpochLines(channel)], start_from=start_from,
                           gate=channel if lockstep else None)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - raised again in the calling thread
            outcome["error"] = e

    runner = threading.Thread(target=fit, daemon=True)
    runner.start()
    try:
        while True:
            running = runner.is_alive()  # read before taking: what the run put before it ended is taken
            for metrics in ray.get(channel.take.remote(0.2)):
                on_epoch(metrics)
                if lockstep:
                    channel.open.remote(metrics["epoch"])
            if not running:
                break
    finally:
        ray.kill(channel)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class InProcessReports:
    """The epochs of a run in this process (the training loop's `reports`, as `RayTrainReports` for a Ray Train
    worker): each epoch's checkpoint saved (`InProcessCheckpoints`), then its metrics to `on_epoch` with the saved
    path ("checkpoint", or None), as `fit_with_epochs` hands them on."""
    in_process, rank, world = True, 0, 1

    def __init__(self, name: str, checkpoints: InProcessCheckpoints, on_epoch: Callable[[dict], None]):
        self.name, self.checkpoints, self.on_epoch = name, checkpoints, on_epoch

    def latest_checkpoint(self) -> None:
        """None: no Ray Train keeps this run's checkpoints; its caller passes the one to continue from."""
        return None

    def report(self, metrics: dict, folder=None, dir_name: str | None = None) -> None:
        path = self.checkpoints.save(folder, dir_name) if folder is not None else None
        self.on_epoch({**metrics, "checkpoint": path})


def fit_in_process(settings: TrainSettings, name: str, storage: str, on_epoch: Callable[[dict], None],
                   start_from: str | None = None, hook: LoopHook | None = None) -> dict | None:
    """Train one worker's loop here, in this process, each epoch to `on_epoch` as `fit_with_epochs` gives it;
    the loop's return value (why it stopped, if it did).

    For a search trial of one worker: no Ray Train run, so no controller, worker or helper processes (~10 s of
    CPU fewer per trial), and `on_epoch` returns only when Tune lets the trial go on. (Ray Train's own local mode
    cannot run inside a Tune trial: its `prepare_model` asks for the Train context, which Ray refuses where a
    Tune session is.) Nothing here retries: the run saves its own checkpoints (the folders Ray Train would),
    continues from `start_from` (its own latest that Tune saw, or another run's), and Tune retries a trial whose
    process dies.
    """
    reports = InProcessReports(name, InProcessCheckpoints(storage, name, settings.keep_checkpoints), on_epoch)
    return train_loop_per_worker({"settings": asdict(settings), "start_from": start_from, "reports": reports,
                                  "hook": hook, "storage_retry_s": storage_module.RETRY_WINDOW_S})


def run_training(settings: TrainSettings, name: str, storage: str, hook: LoopHook | None = None,
                 echo: Callable[[str], None] = print):
    """Check, start or join Ray, train (resuming a run of the same name), print a line per epoch; the Result.

    Raises TrainingError at once for what no retry can fix; only worker deaths spend --max-failures.
    """
    import ray.train

    from gan.ray_runtime import ensure_ray
    settings = check_settings(settings)
    ensure_ray()
    check_workers_placeable(settings)
    try:
        result = fit_with_epochs(settings, name, storage, lambda m: echo(epoch_line(m, settings.epochs)), hook)
    except ray.train.TrainingFailedError as e:
        outage = arrow_outage(str(e))  # Ray Train's own storage calls (its controller's) have pyarrow's retries only
        if outage:
            raise StorageUnavailableError(f"train stopped: S3 at {s3_endpoint() or 'AWS'} did not answer ({outage}); "
                                          "rerun the same command to continue from the run's last complete "
                                          "checkpoint") from None
        raise RuntimeError(f"training failed after {settings.max_failures + 1} attempts: "
                           f"{_last_line(str(e))}") from e
    stopped = result.return_value if isinstance(result.return_value, dict) else {}
    if stopped.get("storage_fault"):  # exit 1: fixed outside the run (the endpoint, space); the rerun continues
        kind = next((k for k in (StorageUnavailableError, StorageFullError) if k.__name__ == stopped["storage_fault"]),
                    StorageError)
        last = f"checkpoint {result.checkpoint.path}" if result.checkpoint else "none yet"
        raise kind(f"train stopped: {stopped['error']}; the run's last complete checkpoint: {last} (rerun the same "
                   "command to continue from it)")
    if stopped.get("error"):
        raise TrainingError(stopped["error"])
    return result


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text


__all__ = ["run_training", "fit_with_epochs", "fit_in_process", "make_trainer", "storage_args", "epoch_line",
           "TrainingError"]
