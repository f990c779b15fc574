"""The Ray Train job: 2 CPU workers, tiny models, local and S3 storage, the score every K epochs and the best
epoch exported, resume, a worker killed mid-epoch."""
import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from gan.checkpoint import from_bytes
from gan.train.data import DataError
from gan.models.cyclegan import CycleGANConfig, CycleGANTrainer
from gan.train.driver import run_training
from gan.train.quality import SCORE
from gan.train.run_checkpoint import (BEST_FILE, BEST_SAMPLES_FILE, CURVE_FILE, GENERATOR_FILE, HISTORY_FILE,
                                      SAMPLES_FILE, STATE_FILE, load_state)
from jobs import train as train_job

TINY = ["--image-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "1", "--batch-size", "2",
        "--num-workers", "2", "--eval-features", "pixels", "--eval-photos", "8"]


def run(args: list[str]) -> int:
    return train_job.main(args)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_epoch_*"))


def history(ckpt: Path) -> list[dict]:
    return json.loads((ckpt / HISTORY_FILE).read_text())


def test_cyclegan_two_workers_scored_every_k_epochs_export_the_best_and_a_rerun_resumes(finished_run, tmp_path):
    """The shared finished run (`finished_run`: 3 epochs on two workers, scored every 2 epochs and at the last) as
    it was left, then the same command with one more epoch, on a copy: it continues, it does not start again."""
    ckpts = checkpoints(finished_run.folder)
    assert [c.name for c in ckpts] == [f"checkpoint_epoch_{e:05d}" for e in range(3)]
    for c in ckpts:
        grid = Image.open(c / SAMPLES_FILE)
        assert grid.size[1] > 2 * 32 and grid.size[0] > 4 * 32  # 2 rows of 4: photos over their stylized versions
    first = history(ckpts[-1])
    assert [h["epoch"] for h in first] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss_g"])) and h["images_per_s"] > 0 for h in first)
    assert [SCORE in h for h in first] == [False, True, True]  # epoch 2 of 3 (K = 2) and the last
    scored = [h for h in first if SCORE in h]
    assert all(h["eval_images"] == 8 and h["eval_features"] == "pixels" and h["fid"] > 0 for h in scored)
    best_epoch = min(scored, key=lambda h: h[SCORE])["epoch"]
    assert first[-1]["best_epoch"] == best_epoch
    epochs = [line for line in finished_run.lines if line.startswith("train: epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/3", "2/3", "3/3"] and all("checkpoint saved" in line
                                                                                for line in epochs)
    g = from_bytes(finished_run.export.read_bytes(), "g.pt", expect_kind="cyclegan")
    assert g.epoch == best_epoch and g.image_size == 32
    assert finished_run.export.read_bytes() == (ckpts[-1] / BEST_FILE).read_bytes()  # the best, not the last
    for name in (BEST_SAMPLES_FILE, CURVE_FILE):
        assert Image.open(ckpts[-1] / name).format == "PNG"

    # the same command with more epochs continues: epochs 0-2 are not trained again, their scores carry over
    args = finished_run.copy_to(tmp_path / "runs")
    assert run([*args, "--epochs", "4", "--export", str(tmp_path / "g.pt")]) == 0
    resumed = history(checkpoints(tmp_path / "runs" / finished_run.folder.name)[-1])
    assert [h["epoch"] for h in resumed] == [0, 1, 2, 3]
    assert resumed[:3] == first  # carried over, not retrained
    assert SCORE in resumed[3] and resumed[3]["best_" + SCORE] == min(h[SCORE] for h in resumed if SCORE in h)
    assert from_bytes((tmp_path / "g.pt").read_bytes(), "g.pt").epoch == resumed[-1]["best_epoch"]  # the best


def test_two_workers_train_the_weights_of_one_worker_with_the_same_global_batch(ray_cluster, demo_data, tmp_path):
    """DDP on CPU: 2 workers x batch 2 end where 1 worker x batch 4 ends. Both see the same images with the same
    crops (one permutation of the epoch shared out by rank, augmentation drawn per item) and DDP averages the
    halves' gradients into the whole batch's; data kept on the device trains as the DataLoader's, and the steps
    compiled by torch.compile (each worker compiles its DDP-wrapped networks) train as the eager ones."""
    common = ["--model", "cyclegan", "--data", str(demo_data), "--image-size", "32", "--ngf", "8", "--ndf", "8",
              "--n-blocks", "1", "--eval-photos", "0", "--epochs", "1", "--steps-per-epoch", "3",
              "--pool-size", "0", "--diffaugment", "", "--storage", str(tmp_path / "runs")]
    # (the two workers cut their batches from images decoded once into device memory and run compiled steps, the
    # one worker's come from the DataLoader into eager steps: the same pixels and maths either way)
    assert run([*common, "--num-workers", "2", "--batch-size", "2", "--name", "two", "--data-on-device", "true",
                "--compile"]) == 0
    assert run([*common, "--num-workers", "1", "--batch-size", "4", "--name", "one"]) == 0
    two, one = (load_state(checkpoints(tmp_path / "runs" / n)[-1] / STATE_FILE) for n in ("two", "one"))
    assert two["step"] == one["step"] == 3
    assert history(checkpoints(tmp_path / "runs" / "two")[-1])[0]["compiled_graphs"] > 0  # the steps were compiled
    assert "compiled_graphs" not in history(checkpoints(tmp_path / "runs" / "one")[-1])[0]
    # The networks compute the same functions. (Not every tensor is equal: a conv bias just before InstanceNorm
    # has a zero gradient up to float noise, which Adam scales up to LR-sized steps that the norm then removes.)
    # (three trainers: one, two, and the untrained start)
    nets = [CycleGANTrainer(CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=1), seed=0) for _ in range(3)]
    for t, state in zip(nets, (one, two)):
        t.load_state_dict(state["trainer"])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        for net in ("g_ab", "g_ba", "d_a", "d_b"):
            out_one, out_two, out_start = (getattr(t, net)(x) for t in nets)
            apart, trained = (out_one - out_two).abs().max(), (out_one - out_start).abs().max()
            # float summation order (and Adam's division by tiny second moments) leaves ~1e-4; training moved
            # the outputs ~0.2: a different batch or a missing gradient average would show at that scale
            assert apart < 1e-3 and apart < trained / 100, (net, apart, trained)


def test_dcgan_two_workers_from_a_yaml_config_tfrecords_and_s3_storage(ray_cluster, demo_data, s3, bucket, tmp_path):
    """A YAML config, the paintings as TFRecords, the run's checkpoints and the exported generator on S3."""
    cfg = tmp_path / "dcgan.yaml"
    cfg.write_text("model: dcgan\nimage_size: 64\nngf: 8\nndf: 8\nbatch_size: 2\nnum_workers: 2\n"
                   "epochs: 2\ndiffaugment: color,translation\neval_features: pixels\neval_photos: 8\n")
    assert run(["--config", str(cfg), "--paintings", str(demo_data / "monet_tfrec"), "--storage",
                f"s3://{bucket}/runs", "--name", "dc", "--export", f"s3://{bucket}/models/d.pt"]) == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    for epoch in (0, 1):
        for f in (SAMPLES_FILE, GENERATOR_FILE, STATE_FILE, HISTORY_FILE):
            assert f"runs/dc/checkpoint_epoch_{epoch:05d}/{f}" in keys
    last = "runs/dc/checkpoint_epoch_00001"
    grid = Image.open(io.BytesIO(s3.get_object(Bucket=bucket, Key=f"{last}/{SAMPLES_FILE}")["Body"].read()))
    assert grid.size[0] > 8 * 64
    assert [h["epoch"] for h in json.loads(s3.get_object(Bucket=bucket, Key=f"{last}/{HISTORY_FILE}")["Body"].read())
            ] == [0, 1]
    d = from_bytes(s3.get_object(Bucket=bucket, Key="models/d.pt")["Body"].read(), "d.pt", expect_kind="dcgan")
    assert d.config["image_size"] == 64 and d.config["diffaugment"] == "color,translation"


def test_a_worker_killed_mid_epoch_is_survived(ray_cluster, demo_data, tmp_path):
    marker = str(tmp_path / "killed")

    def kill_rank_1_once(event: str, rank: int, epoch: int) -> None:  # passed in from outside; production has none
        if event == "mid_epoch" and rank == 1 and epoch == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # a worker process dying mid-epoch, as on a lost node

    _, settings = train_job.parse(["--model", "cyclegan", "--data", str(demo_data), *TINY, "--epochs", "3",
                                   "--max-failures", "2"])
    run_training(settings, "kill", str(tmp_path / "runs"), hook=kill_rank_1_once, echo=lambda line: None)
    assert os.path.exists(marker)
    last = checkpoints(tmp_path / "runs" / "kill")[-1]
    assert last.name == "checkpoint_epoch_00002"
    assert [h["epoch"] for h in history(last)] == [0, 1, 2]  # epoch 1 appears once, though started twice


def test_bad_data_fails_before_any_worker_starts(tmp_path, demo_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--photos .*empty: no files found"):
        run(["--model", "cyclegan", "--photos", str(tmp_path / "empty"), "--paintings", str(demo_data / "monet_jpg"),
             "--storage", str(tmp_path / "runs")])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="--paintings .*junk: no readable image among 1 files"):
        run(["--model", "dcgan", "--paintings", str(tmp_path / "junk"), "--storage", str(tmp_path / "runs")])
    with pytest.raises(ValueError, match="image_size must be one of"):
        run(["--model", "dcgan", "--paintings", str(demo_data / "monet_jpg"), "--image-size", "48"])
    yaml_file = tmp_path / "fast.yaml"  # a flag's choices are argparse's; a file's value is checked the same
    yaml_file.write_text("compile: fastest\n")
    with pytest.raises(ValueError, match="compile must be one of default, reduce-overhead, max-autotune, got 'fastest'"):
        run(["--config", str(yaml_file), "--data", str(demo_data), "--storage", str(tmp_path / "runs")])
