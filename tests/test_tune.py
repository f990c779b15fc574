"""Hyperparameter search: the space file, ASHA stopping trials on the in-training score, the ranked report, the
best generator exported as stylize loads it, and an interrupted search that resumes."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gan.checkpoint import from_bytes
from gan.io.storage import StorageUnavailableError, open_storage
from gan.ray_runtime import free_port
from gan.train.run_checkpoint import CheckpointNotSaved, InProcessCheckpoints
from gan.train.settings import TrainSettings
from gan.train.search import (CURVES_PNG, REPORT_JSON, REPORT_MD, SAMPLES_PNG, SearchError, SearchOptions,
                              parse_space, run_search, trial_settings)
from jobs import tune as tune_job
from tests.conftest import ROOT

BASE = {"image_size": 32, "ngf": 8, "ndf": 8, "n_blocks": 1, "batch_size": 2, "steps_per_epoch": 3,
        "eval_photos": 8, "eval_features": "pixels", "epochs": 4}
SPACE = {"lr": {"choice": [0.00000001, 0.0002, 0.001]}, "upsample": {"choice": ["transpose", "resize"]},
         "ema": {"choice": [0.0, 0.9]}, "residual": {"choice": [False, True]}}


def _space_file(tmp_path: Path, base: dict | None = None, space: dict | None = None) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({"base": base or BASE, "space": space or SPACE}))
    return path


def test_the_space_file_and_the_trial_settings():
    domains = parse_space({"lr": {"loguniform": [1e-5, 1e-3]}, "ngf": {"choice": [8, 16]}, "epochs": 3},
                          {"lr", "ngf", "epochs"})
    assert 1e-5 <= domains["lr"].sample() <= 1e-3 and domains["ngf"].sample() in (8, 16) and domains["epochs"] == 3
    with pytest.raises(SearchError, match="unknown setting 'lrr'"):
        parse_space({"lrr": 1}, {"lr"})
    with pytest.raises(SearchError, match="ngf: expected one of"):
        parse_space({"ngf": {"some": [1]}}, {"ngf"})
    assert parse_space({"ngf": {"grid": [8, 16]}}, {"ngf"}) == {"ngf": {"grid_search": [8, 16]}}
    with pytest.raises(SearchError, match=r"^search space: ngf: grid needs a non-empty list of values, got 8$"):
        parse_space({"ngf": {"grid": 8}}, {"ngf"})
    s = trial_settings(TrainSettings(model_config={"ngf": 8}), {"lr": 1e-3, "batch_size": 4, "ngf": 16})
    assert s.batch_size == 4 and s.model_config == {"ngf": 16, "lr": 1e-3}
    assert tune_job.duration("30m") == 1800 and tune_job.duration("90") == 90 and tune_job.duration("1.5h") == 5400


def test_gpu_shares_decide_what_each_trial_asks_for_and_how_many_run(monkeypatch):
    """--gpus-per-trial 0.25: each trial's workers ask for a quarter GPU, so four single-worker trials (or two
    two-worker trials) run on one GPU at once. (No GPU here: Ray's view of the cluster is given.)"""
    import ray
    from dataclasses import replace
    from gan.train.settings import per_worker_resources
    from gan.train.search import SearchOptions, concurrency
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    base, opts = TrainSettings(cpus_per_worker=2.0), SearchOptions(gpus_per_trial=0.25)
    assert concurrency(base, opts) == 4 and concurrency(replace(base, num_workers=2), opts) == 2
    assert concurrency(base, SearchOptions()) == 8  # CPU trials: 16 CPUs / 2 per worker
    shared = replace(base, use_gpu=True, gpus_per_worker=opts.gpus_per_trial)
    assert per_worker_resources(shared) == {"CPU": 2.0, "GPU": 0.25}
    assert per_worker_resources(base) == {"CPU": 2.0}


def test_a_bad_space_fails_before_any_trial(ray_cluster, demo_data, tmp_path, capsys):
    from jobs.cli import run_main
    path = _space_file(tmp_path, space={"ngf": {"choice": [8]}, "upsample": {"choice": ["sideways"]}})
    code = run_main(tune_job.main, ["--space", str(path), "--data", str(demo_data), "--storage", str(tmp_path)])
    assert code == 2 and "upsample must be one of" in capsys.readouterr().err
    path = _space_file(tmp_path, space={"upsample": {"grid": ["resize", "sideways"]}})  # each grid value checked
    code = run_main(tune_job.main, ["--space", str(path), "--data", str(demo_data), "--storage", str(tmp_path)])
    assert code == 2 and "upsample must be one of" in capsys.readouterr().err


def test_asha_stops_poor_trials_and_the_report_ranks_them(ray_cluster, demo_data, tmp_path):
    """Which trials ASHA stops depends on the order their epochs reach it, so the order is fixed: one trial at a
    time, in the grid's order: a generator that starts as its input (scored near the photos), then two that start
    as noise. Each noise trial meets the input trial's score at epoch 1 and is stopped there."""
    out = tmp_path / "runs"
    space = {"residual": {"grid": [True, False, False]}, "upsample": {"choice": ["transpose", "resize"]},
             "ema": {"choice": [0.0, 0.9]}}
    assert tune_job.main(["--space", str(_space_file(tmp_path, space=space)), "--trials", "1",
                          "--max-concurrent", "1", "--data", str(demo_data), "--storage", str(out), "--name", "s",
                          "--export", str(tmp_path / "best.pt")]) == 0
    report = json.loads((out / "s" / REPORT_JSON).read_text())
    trials = report["trials"]
    assert len(trials) == 3 and [t["rank"] for t in trials] == [1, 2, 3]
    assert [t["mifid"] for t in trials] == sorted(t["mifid"] for t in trials)
    noise = [t for t in trials if not t["settings"]["residual"]]
    assert len(noise) == 2 and trials[-2:] == noise  # ranked last
    assert all(t["stopped_early"] and t["epochs"] == 1 for t in noise), [(t["epochs"], t["mifid"]) for t in trials]
    assert trials[0]["epochs"] == 4 and not trials[0]["stopped_early"]
    for t in trials:  # each trial's curve is its own epochs, once each, and its best is the curve's minimum
        epochs = [e for e, _ in t["curve"]]
        assert epochs == list(range(1, t["epochs"] + 1)) and t["mifid"] == min(s for _, s in t["curve"])
        # trained in the trial's own process, its checkpoints where Ray Train puts them, the newest 3 kept
        saved = sorted(p.name for p in (out / "s" / "trials" / t["trial"]).glob("checkpoint_epoch_*"))
        assert saved == [f"checkpoint_epoch_{e:05d}" for e in range(max(0, t["epochs"] - 3), t["epochs"])], saved
        history = json.loads((Path(t["checkpoint"]) / "history.json").read_text())
        assert [h["workers"] for h in history] == [1] * t["epochs"]
    md = (out / "s" / REPORT_MD).read_text()
    assert md.index(trials[0]["trial"]) < md.index(trials[-1]["trial"])
    for name in (SAMPLES_PNG, CURVES_PNG):
        assert Image.open(out / "s" / name).format == "PNG"
    best = from_bytes((tmp_path / "best.pt").read_bytes(), "best.pt", expect_kind="cyclegan")
    assert (best.config["upsample"], best.config["ema"]) == (trials[0]["settings"]["upsample"],
                                                             trials[0]["settings"]["ema"])
    import torch
    photos = torch.rand(2, 3, 32, 32) * 2 - 1  # built as stylize's actors build it (its loading is tested there)
    assert best.build()(photos).shape == (2, 3, 32, 32)


def test_a_trial_of_one_worker_saves_its_checkpoints_as_ray_train_would_and_keeps_the_newest(s3, bucket, tmp_path):
    """A trial trained in its own process saves its run's checkpoints itself: the run's folder, local or on S3,
    named as Ray Train names them (S3 without the scheme), the newest `keep_checkpoints` kept."""
    for storage in (str(tmp_path / "runs"), f"s3://{bucket}/runs"):
        saved = InProcessCheckpoints(storage, "t1", keep=2)
        for epoch in range(3):
            folder = tmp_path / f"epoch{epoch}"
            folder.mkdir(exist_ok=True)
            (folder / "history.json").write_text(json.dumps([{"epoch": epoch}]))
            path = saved.save(folder, f"checkpoint_epoch_{epoch:05d}")
        kept = open_storage(f"{storage}/t1")
        assert sorted(kept.list("")) == [f"checkpoint_epoch_0000{e}/history.json" for e in (1, 2)]
        assert path == (f"{bucket}/runs/t1/checkpoint_epoch_00002" if storage.startswith("s3://")
                        else f"{tmp_path}/runs/t1/checkpoint_epoch_00002")
        assert json.loads(kept.read("checkpoint_epoch_00002/history.json")) == [{"epoch": 2}]


def test_a_trial_checkpoint_that_s3_does_not_take_stops_the_run_with_the_storage_fault(monkeypatch, tmp_path):
    """S3 unreachable past the retry window: the save raises CheckpointNotSaved carrying the outage, as Ray Train's
    own upload does, so the trial stops with one line naming the endpoint."""
    import gan.io.storage as storage_module
    monkeypatch.setattr(storage_module, "RETRY_WINDOW_S", 0.0)  # one try
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    folder = tmp_path / "epoch0"
    folder.mkdir()
    (folder / "history.json").write_text("[]")
    with pytest.raises(CheckpointNotSaved, match=r"^checkpoint_epoch_00000 was not saved \(StorageUnavailableError"
                                                 r"; the run stops\)$") as caught:
        InProcessCheckpoints("s3://bkt/runs", "t1", keep=2).save(folder, "checkpoint_epoch_00000")
    assert isinstance(caught.value.fault, StorageUnavailableError)
    assert re.match(r"S3 at http://127.0.0.1:\d+ did not answer for 0 s \(saving checkpoint_epoch_00000: ",
                    str(caught.value.fault))


def test_a_trial_whose_process_dies_is_tried_again_from_its_last_epoch(ray_cluster, demo_data, tmp_path):
    """A trial of one worker is its own process: when it dies mid-epoch, Tune starts the trial again from the last
    epoch it saw (the base's max_failures), and every epoch is in the trial's history once."""
    marker = str(tmp_path / "killed")

    def die_once_in_epoch_2(event: str, rank: int, epoch: int) -> None:  # passed in from outside; production has none
        if event == "mid_epoch" and epoch == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the trial's process dying mid-epoch, as on a lost node

    base = TrainSettings.from_flat({**BASE, "epochs": 3}, photos=str(demo_data / "photo_jpg"),
                                   paintings=str(demo_data / "monet_jpg"))
    report = run_search(base, {"lr": {"choice": [0.0002]}}, SearchOptions(trials=1), "k", str(tmp_path / "runs"),
                        hook=die_once_in_epoch_2)
    assert os.path.exists(marker)
    (trial,) = report["trials"]
    assert [e for e, _ in trial["curve"]] == [1, 2, 3] and trial["epochs"] == 3
    history = json.loads((Path(trial["checkpoint"]) / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]  # epoch 2 once, though started twice


def test_a_trial_of_two_workers_drives_a_ray_train_run_of_its_own(ray_cluster, demo_data, tmp_path):
    """A trial of one worker trains in its own process (above); of more, it drives a Ray Train run whose workers
    ask for their own CPUs, held after each epoch until Tune has seen it."""
    out = tmp_path / "runs"
    space = _space_file(tmp_path, base={**BASE, "epochs": 2, "num_workers": 2}, space={"lr": {"choice": [0.0002]}})
    assert tune_job.main(["--space", str(space), "--trials", "1", "--data", str(demo_data), "--storage", str(out),
                          "--name", "w"]) == 0
    (trial,) = json.loads((out / "w" / REPORT_JSON).read_text())["trials"]
    assert [e for e, _ in trial["curve"]] == [1, 2]
    history = json.loads((Path(trial["checkpoint"]) / "history.json").read_text())
    assert [h["workers"] for h in history] == [2, 2] and Path(trial["checkpoint"]).parent.name == trial["trial"]


def test_pbt_hands_the_best_trials_weights_to_the_worst(ray_cluster, demo_data, tmp_path):
    """Population-based training: a trailing trial continues a leading trial's weights (a new Train run started
    from that trial's checkpoint, with its own perturbed settings), so its curve carries on, not from zero."""
    out = tmp_path / "runs"
    space = _space_file(tmp_path, base={**BASE, "epochs": 2},
                        space={"lr": {"choice": [0.00000001, 0.001]}, "lambda_cycle": {"uniform": [5.0, 10.0]}})
    assert tune_job.main(["--space", str(space), "--trials", "2", "--max-concurrent", "2", "--scheduler", "pbt",
                          "--data", str(demo_data), "--storage", str(out), "--name", "p"]) == 0
    report = json.loads((out / "p" / REPORT_JSON).read_text())
    trials = report["trials"]
    assert report["scheduler"] == "pbt" and len(trials) == 2
    # each trial is reported as itself, though PBT restores one from the other's checkpoint, after which Tune
    # gives it that trial's last result (and Tune's per-trial result files can lose rows across the restarts)
    names = {t["trial"] for t in trials}
    assert len(names) == 2
    continued = [t for t in trials if t["continued_from"]]
    assert continued, "PBT handed no trial another's weights"
    for t in continued:
        assert set(t["continued_from"]) <= names - {t["trial"]}
        assert [e for e, _ in t["curve"]] == [1, 2]  # the donor's epoch, then its own: each once
        run = Path(t["checkpoint"]).parent.name
        assert run.startswith(t["trial"] + "-from-"), run
    assert "| continued from |" in (out / "p" / REPORT_MD).read_text()


def test_pbt_refuses_a_space_that_changes_the_networks(ray_cluster, demo_data, tmp_path, capsys):
    from jobs.cli import run_main
    path = _space_file(tmp_path, space={"lr": {"choice": [0.001, 0.0002]}, "ngf": {"choice": [8, 16]}})
    code = run_main(tune_job.main, ["--space", str(path), "--scheduler", "pbt", "--data", str(demo_data),
                                    "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "ngf cannot change while a trial trains" in err and len(err.strip().splitlines()) == 1
    path = _space_file(tmp_path, space={"lr": {"grid": [0.001, 0.0002]}})
    code = run_main(tune_job.main, ["--space", str(path), "--scheduler", "pbt", "--data", str(demo_data),
                                    "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "lr: PBT perturbs the values it samples" in err and len(err.strip().splitlines()) == 1


def test_a_continued_run_follows_its_configured_lr():
    """A trial continued by PBT (or a run resumed with another --lr) trains at its own LR, at the schedule's point."""
    from gan.models.cyclegan import CycleGANConfig, CycleGANTrainer
    from gan.models.dcgan import DCGANConfig, DCGANTrainer
    sizes = {"image_size": 32, "ngf": 8, "ndf": 8, "n_blocks": 1, "epochs": 4, "decay_epochs": 2}
    saved = CycleGANTrainer(CycleGANConfig(**sizes, lr=2e-4))
    for _ in range(3):  # epoch 3 of 4: a third of the LR left
        saved.opt_g.step(), saved.opt_d.step(), saved.end_epoch()
    continued = CycleGANTrainer(CycleGANConfig(**sizes, lr=1e-3))
    continued.load_state_dict(saved.state_dict())
    for opt in (continued.opt_g, continued.opt_d):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / 3)
    continued.end_epoch()
    assert continued.opt_g.param_groups[0]["lr"] == pytest.approx(0.0)
    same = CycleGANTrainer(CycleGANConfig(**sizes, lr=2e-4))
    same.load_state_dict(saved.state_dict())  # the same LR: resuming changes nothing
    assert same.opt_g.param_groups[0]["lr"] == pytest.approx(saved.opt_g.param_groups[0]["lr"])
    dc = DCGANTrainer(DCGANConfig(ngf=8, ndf=8, lr=5e-4))
    dc.load_state_dict(DCGANTrainer(DCGANConfig(ngf=8, ndf=8, lr=2e-4)).state_dict())
    assert dc.opt_g.param_groups[0]["lr"] == dc.opt_d.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.slow
def test_an_interrupted_search_resumes(ray_cluster, demo_data, tmp_path):
    """The search is interrupted (Ctrl-C) while trials run; the same command again continues them, not from zero.
    Both runs join the session's Ray (RAY_ADDRESS, as on a cluster): the first's trials and their Train runs end with
    its driver, as they would with a Ray of its own."""
    out = tmp_path / "runs"
    space = _space_file(tmp_path, base={**BASE, "epochs": 3},
                        space={"lr": {"choice": [0.0002, 0.0005]}, "ngf": {"choice": [8]}})
    cmd = [sys.executable, "-m", "jobs.tune", "--space", str(space), "--trials", "2", "--max-concurrent", "2",
           "--data", str(demo_data), "--storage", str(out), "--name", "r", "--scheduler", "asha",
           "--grace-epochs", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while (first.poll() is None and time.monotonic() < deadline
           and len(list((out / "r" / "trials").glob("*/checkpoint_epoch_00000"))) < 2):
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read().decode()[-2000:]
    time.sleep(2)  # let Tune save its experiment state after those reports
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment and the driver and its Ray stop
    try:
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "(resumed)" in done.stdout
    report = json.loads((out / "r" / REPORT_JSON).read_text())
    assert report["resumed"] and len(report["trials"]) == 2
    for t in report["trials"]:  # every epoch once: the resumed trials did not start again from epoch 1
        assert [e for e, _ in t["curve"]] == [1, 2, 3]
        history = sorted((out / "r" / "trials" / t["trial"]).glob("checkpoint_epoch_*"))
        assert history, t
