"""What a new user meets first: relative paths from any directory, resume on any device, errors that no retry
fixes failing once with one line, and a main command whose output is ours, not Ray's."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from gan.checkpoint import generator_checkpoint, to_bytes
from jobs.cli import run_main
from gan.models.cyclegan import CycleGANConfig, CycleGANTrainer
from gan.train.data import DataError
from gan.models.dcgan import DCGANConfig, DCGANGenerator, DCGANTrainer
from gan.io.storage import resolve_uri
from gan.train.driver import TrainingError, run_training
from gan.train.run_checkpoint import load_state
from gan.train.settings import TrainSettings
from jobs import assemble as assemble_job
from jobs import evaluate as evaluate_job
from jobs import generate as generate_job
from jobs import stylize as stylize_job
from jobs import train as train_job
from tests.conftest import free_port
from tests.helpers import floats

TINY = {"image_size": 32, "ngf": 8, "ndf": 8, "n_blocks": 1}


def test_resolve_uri_makes_local_paths_absolute_and_leaves_s3_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("demo/data") == str(tmp_path / "demo" / "data")
    assert resolve_uri("file://" + str(tmp_path / "x")) == str(tmp_path / "x")
    assert resolve_uri(str(tmp_path / "abs")) == str(tmp_path / "abs")
    assert resolve_uri("s3://bucket/runs/a") == "s3://bucket/runs/a"
    with pytest.raises(OSError, match="unsupported scheme 'gs'"):
        resolve_uri("gs://bucket/x")


def test_every_job_takes_paths_relative_to_the_current_directory(ray_cluster, demo_data, tmp_path, monkeypatch):
    """Run from a directory that is neither the repo nor Ray's: Ray Train workers run in the session's artifacts
    folder and would not find `data/...` unless the driver resolved it."""
    work = tmp_path / "elsewhere"
    shutil.copytree(demo_data, work / "data")
    monkeypatch.chdir(work)
    (work / "train.yaml").write_text("model: cyclegan\nphotos: data/photo_jpg\npaintings: data/monet_jpg\n"
                                     "image_size: 32\nngf: 8\nndf: 8\nn_blocks: 1\nbatch_size: 4\nepochs: 1\n"
                                     "eval_features: pixels\neval_photos: 4\n")
    assert train_job.main(["--config", "train.yaml", "--storage", "runs", "--name", "rel", "--export", "g.pt"]) == 0
    assert (work / "runs" / "rel" / "checkpoint_epoch_00000" / "generator.pt").is_file()
    assert (work / "g.pt").is_file()

    assert stylize_job.main(["--checkpoint", "g.pt", "--input", "data/photo_jpg", "--output", "out", "--zip",
                             "out.zip", "--min-images", "1", "--no-progress"]) == 0
    assert len(list((work / "out").glob("*.jpg"))) == 24 and (work / "out.zip").is_file()

    (work / "d.pt").write_bytes(to_bytes(generator_checkpoint("dcgan", DCGANConfig(ngf=8), DCGANGenerator(DCGANConfig(ngf=8)))))
    assert generate_job.main(["--checkpoint", "d.pt", "--count", "3", "--output", "gen", "--no-progress"]) == 0
    assert assemble_job.main(["--input", "gen", "--output", "zips/gen.zip", "--min-images", "3"]) == 0
    with zipfile.ZipFile(work / "zips" / "gen.zip") as zf:
        assert len(zf.namelist()) == 3

    assert evaluate_job.main(["--generated", "out.zip", "--real", "data/monet_jpg", "--features", "pixels",
                              "--min-images", "1", "--report", "eval/report.json", "--no-progress"]) == 0
    report = json.loads((work / "eval" / "report.json").read_text())
    assert report["counts"] == {"generated": 24, "real": 12, "train": 12, "rejected": 0}
    assert report["generated"] == str(work / "out.zip")


def _save_as_a_gpu_run_would(obj, path: Path, monkeypatch) -> None:
    """torch.save records each storage's device; a GPU run's file says cuda:0 for its tensors."""
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(obj, path)
    monkeypatch.undo()


@pytest.mark.parametrize("kind", ["cyclegan", "dcgan"])
def test_a_training_state_saved_on_a_gpu_resumes_on_cpu(kind, tmp_path, monkeypatch):
    if kind == "cyclegan":
        make = lambda: CycleGANTrainer(CycleGANConfig(**TINY, pool_size=4), "cpu")  # noqa: E731
        batch = (torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1)
    else:
        make = lambda: DCGANTrainer(DCGANConfig(image_size=64, ngf=8, ndf=8), "cpu")  # noqa: E731
        batch = (torch.rand(2, 3, 64, 64) * 2 - 1,)
    a = make()
    a.step(*batch)
    path = tmp_path / "state.pt"
    _save_as_a_gpu_run_would({"trainer": a.state_dict(), "epoch": 0, "step": 1}, path, monkeypatch)
    if not torch.cuda.is_available():  # the file really is a GPU run's: a plain load cannot place its tensors here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    state = load_state(path)
    if kind == "dcgan":
        rng = state["trainer"]["noise_rng"]
        assert rng.device.type == "cpu" and rng.dtype == torch.uint8  # a ByteTensor that set_state accepts
    b = make()
    b.load_state_dict(state["trainer"])
    nets = ("g_ab", "g_ba", "d_a", "d_b") if kind == "cyclegan" else ("g", "d")
    for net in nets:
        sa, sb = a.state_dict()[net], b.state_dict()[net]
        assert all(torch.equal(sa[n], sb[n]) for n in sa), net
    torch.manual_seed(3)
    la = floats(a.step(*batch))
    torch.manual_seed(3)
    assert floats(b.step(*batch)) == la  # continues exactly as the original would


def _settings(demo_data: Path, **kw) -> TrainSettings:
    values = {"model": "cyclegan", "batch_size": 2, "num_workers": 2, "max_failures": 2, "model_config": dict(TINY),
              "eval_features": "pixels", "eval_photos": 4, **kw}
    return TrainSettings(photos=str(demo_data / "photo_jpg"), paintings=str(demo_data / "monet_jpg"), **values)


def _setup_log(log: str, then=None):
    """A training hook that adds each worker's rank to the file `log` as the worker sets up (one line per worker
    and attempt), then calls `then(rank)`."""
    def hook(event: str, rank: int, epoch: int) -> None:
        if event == "setup":
            with open(log, "a") as f:
                f.write(f"{rank}\n")
            if then:
                then(rank)
    return hook


def test_a_data_error_in_the_workers_spends_exactly_one_attempt(ray_cluster, demo_data, tmp_path):
    """Rank 0 meets bad data, rank 1 a package missing on its machine: neither a retry can fix."""
    log = str(tmp_path / "setups.log")

    def bad_data(rank: int) -> None:
        if rank == 1:
            raise ModuleNotFoundError("No module named 'torchmetrics' (simulated)")
        raise DataError("photos/x.jpg: corrupt image (simulated)")

    with pytest.raises(TrainingError, match=r"^photos/x.jpg: corrupt image \(simulated\)$"):
        run_training(_settings(demo_data, epochs=1), "bad", str(tmp_path / "runs"), hook=_setup_log(log, bad_data),
                     echo=lambda line: None)
    assert sorted(Path(log).read_text().split()) == ["0", "1"]  # both workers, once: no retry


def test_resuming_with_a_checkpoint_of_another_kind_fails_at_once(finished_run, demo_data, tmp_path):
    log = str(tmp_path / "setups.log")
    finished_run.copy_to(tmp_path / "runs")  # a CycleGAN run, under the name the DCGAN run is given
    dcgan = _settings(demo_data, model="dcgan", epochs=2, num_workers=1,
                      model_config={"image_size": 64, "ngf": 8, "ndf": 8})
    with pytest.raises(TrainingError, match="is a cyclegan run; this run trains dcgan"):
        run_training(dcgan, finished_run.folder.name, str(tmp_path / "runs"), hook=_setup_log(log),
                     echo=lambda line: None)
    assert Path(log).read_text().split() == ["0"]  # one attempt


def test_workers_this_machine_can_never_place_fail_at_once(demo_data, tmp_path):
    """`jobs.train --recipe kaggle` (a GPU recipe) on this machine, which has no GPU: exit 2 and one line naming the
    setting, in seconds, where Ray Train would retry placing its worker for ever, silently. In its own process and
    Ray, with Ray's dashboard packages hidden (as on a GPU image given a bare Ray): that Ray starts all the same."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hidden:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'aiohttp_cors':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hidden())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "jobs.train", "--recipe", "kaggle", "--data", str(demo_data), "--storage", "runs",
           "--name", "gpu", "--eval-photos", "8"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: use_gpu (--use-gpu"), err
    assert "1 training worker needs 1 GPU" in err[0] and "no GPU that Ray sees here" in err[0]
    assert not (tmp_path / "runs" / "gpu").exists()


def test_placement_is_checked_where_ray_cannot_grow(ray_cluster, demo_data, monkeypatch):
    """The same check for training workers and model actors, naming each setting; a cluster joined through
    RAY_ADDRESS is not checked (its autoscaler may add the GPU nodes: there the job waits, as Ray does)."""
    import ray
    from gan import ray_runtime
    from gan.batch.pipeline import actor_plan, check_plan
    from gan.train.settings import check_settings, check_workers_placeable
    here = ray.get_runtime_context().gcs_address
    monkeypatch.setattr(ray_runtime, "_embedded_gcs", here)  # as if this process had started the test Ray (4 CPUs)
    with pytest.raises(ValueError, match=r"^actors, use_gpu \(--actors, --use-gpu\): 1 model actor needs 1 GPU in all, "
                                         r".* has 0: no GPU"):
        check_plan(actor_plan(None, None, True), 0.5)
    with pytest.raises(ValueError, match=r"^actors x cpus_per_actor \(--actors, --cpus-per-actor\) and 0.5 CPU for the "
                                         r"decode and write tasks: 4 model actors need 4.5 CPU in all, .* has 4\b"):
        check_plan(actor_plan(4, None, False), 0.5)  # every CPU an actor's: the tasks beside them would never run
    with pytest.raises(ValueError, match=r"^actor_resources \(--actor-resources\): 1 model actor needs 1 stylizer"):
        check_plan(actor_plan(1, 1.0, False, {"stylizer": 1}), 0.5)
    check_plan(actor_plan(3, None, False), 0.5)
    check_plan(actor_plan(4, None, False), 0.0)  # no task beside them (evaluate decodes in its actors)
    five = check_settings(_settings(demo_data, num_workers=5))
    with pytest.raises(ValueError, match=r"^cpus_per_worker \(--cpus-per-worker\): 5 training workers need 5 CPU"):
        check_workers_placeable(five)
    check_workers_placeable(check_settings(_settings(demo_data, num_workers=5, min_workers=2)))  # elastic: 2 fit
    monkeypatch.setattr(ray_runtime, "_embedded_gcs", "10.0.0.1:6379")  # this Ray joined, not started here: a
    check_plan(actor_plan(None, None, True), 0.5)                      # cluster may grow, so nothing is refused
    check_workers_placeable(five)


def _our_stderr(capsys) -> list[str]:
    """stderr lines, less what the test session's shared Ray (log_to_driver on) forwards from its actors."""
    return [ln for ln in capsys.readouterr().err.strip().splitlines() if "pid=" not in ln]


def test_command_line_errors_are_one_line_with_exit_code_2(tmp_path, demo_data, capsys):
    assert run_main(train_job.main, ["--data", str(tmp_path / "missing"), "--storage", str(tmp_path / "r")]) == 2
    err = _our_stderr(capsys)
    assert len(err) == 1 and err[0].startswith("error: --photos") and "no files found" in err[0]
    assert run_main(train_job.main, ["--model", "dcgan", "--paintings", str(demo_data / "monet_jpg"),
                                     "--image-size", "48"]) == 2
    assert "image_size must be one of" in capsys.readouterr().err
    assert run_main(stylize_job.main, ["--checkpoint", str(tmp_path / "nope.pt"), "--input", str(demo_data),
                                       "--output", str(tmp_path / "o")]) == 2
    err = _our_stderr(capsys)
    assert len(err) == 1 and "nope.pt: no such file" in err[0]
    (tmp_path / "cfg.yaml").write_text("epochs: 2\nlearning_rate: 1\n")
    with pytest.raises(SystemExit):
        train_job.parse(["--config", str(tmp_path / "cfg.yaml")])
    assert "unknown settings: learning_rate" in capsys.readouterr().err


RAY_CHATTER = ("pid=", "WARNING", "core_worker", "PlacementGroupCleaner", "Token authentication", "INFO ",
               "Traceback", "TrainController", "(ip=")


def test_a_local_rays_processes_are_told_where_its_state_api_is(ray_cluster):
    """Ray Train's placement-group cleaner asks the State API; with no address given it looks for the one Ray on the
    machine, and beside another live Ray its thread died ("Found multiple active Ray instances") and a search's
    stopped trials kept their CPUs (the search hung). A local Ray (`start_local_ray`, as `ensure_ray` starts one)
    tells its processes where its own dashboard is."""
    import ray

    from ray.util.state import list_nodes

    @ray.remote(num_cpus=0)
    def api_server() -> str | None:
        return os.environ.get("RAY_API_SERVER_ADDRESS")

    told = ray.get(api_server.remote())
    dashboard = ray_cluster._private.worker.global_worker.node.address_info["webui_url"]
    assert told == f"http://{dashboard}"
    assert {n.node_id for n in list_nodes(address=told)} == {n["NodeID"] for n in ray.nodes()}  # this Ray's


def test_main_command_from_a_fresh_directory_prints_only_our_lines(tmp_path):
    """The README's main command form, relative --workdir, in a new directory, in its own process and Ray.

    Ray's temp dir names a dead `ray start` cluster (a stale `ray_current_cluster`, as a killed head leaves it),
    which a plain `ray.init()` would try to join: without RAY_ADDRESS the job starts its own Ray all the same, and
    none of that Ray's processes (Ray Train's placement-group cleaner asks the State API) tries the dead one."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    (ray_tmp / "ray").mkdir()
    dead = free_port()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"RAY_TMPDIR": str(ray_tmp)}
    cmd = [sys.executable, "-m", "jobs.pipeline", "--workdir", "demo", "--photos", "16", "--paintings", "8",
           "--epochs", "1", "--image-size", "32", "--ngf", "8", "--n-blocks", "1", "--features", "pixels"]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        logs = [p for p in (ray_tmp / "ray").glob("session_*/logs/*") if p.is_file()]
        tried_dead = [p.name for p in logs if f":{dead}" in p.read_text(errors="replace")]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert logs and tried_dead == [], tried_dead  # (it cost each training run 10 s of GCS connection timeouts)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert (tmp_path / "demo" / "images.zip").is_file()
    report = json.loads((tmp_path / "demo" / "images.zip.evaluation.json").read_text())
    assert report["counts"]["generated"] == 16
    for stage in range(1, 6):
        assert f"pipeline: [{stage}/5]" in out
    assert "train: epoch 1/1" in out
    noise = [line for line in out.splitlines() if any(c in line for c in RAY_CHATTER)]
    assert noise == [], noise


def test_the_pipeline_trains_real_data_with_the_recipe_and_demo_data_small():
    """`jobs.pipeline --data` starts from the measured recipe (flags given win); demo data keeps the small sizes."""
    from jobs import pipeline
    from gan.train.recipes import RECIPES
    settings = lambda argv: pipeline.train_settings(pipeline.parse(argv), "p", "q")  # noqa: E731
    recipe, real = RECIPES["kaggle-cpu"], settings(["--data", "x"])
    assert (real.epochs, real.steps_per_epoch, real.batch_size, real.eval_photos) == (
        recipe["epochs"], recipe["steps_per_epoch"], recipe["batch_size"], recipe["eval_photos"])
    assert {k: real.model_config[k] for k in ("image_size", "ngf", "n_blocks", "residual", "ema", "preprocess")} == {
        k: recipe[k] for k in ("image_size", "ngf", "n_blocks", "residual", "ema", "preprocess")}
    flags = settings(["--data", "x", "--epochs", "7", "--ngf", "32"])
    assert flags.epochs == 7 and flags.model_config["ngf"] == 32 and flags.model_config["residual"] is True
    demo = settings([])
    assert demo.epochs == 3 and demo.eval_photos == 0 and demo.batch_size == 4
    assert demo.model_config == {"image_size": 64, "ngf": 16, "n_blocks": 2, "ndf": 16}
    plain = settings(["--data", "x", "--recipe", "none"])
    assert plain.eval_photos == 1000 and "residual" not in plain.model_config and not plain.use_gpu
    gpu, full = settings(["--data", "x", "--use-gpu"]), RECIPES["kaggle"]  # on a GPU: the full-size recipe
    assert gpu.use_gpu and (gpu.epochs, gpu.batch_size, gpu.model_config["ngf"], gpu.model_config["n_blocks"]) == (
        full["epochs"], full["batch_size"], 64, 9)
    assert not real.use_gpu and settings(["--data", "x", "--recipe", "kaggle"]).use_gpu


def _loaded_by_importing(modules: str, watched: tuple[str, ...], then: str = "") -> list[str]:
    """Which of `watched` a fresh interpreter has loaded after `import` of `modules` (the repo on its path) and
    running the statements `then`."""
    code = (f"import json, sys, {modules}\n{then}\n"
            f"print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_jobs_workers_and_the_server_start_without_the_slow_optional_imports():
    """Every Ray worker, trial, actor and replica imports our modules at its start; torchvision (it loads
    torch._dynamo) and torchmetrics (scipy) cost it seconds there, so they load only where a grid is drawn or a
    score computed."""
    assert _loaded_by_importing("jobs.train, jobs.tune, jobs.pipeline, jobs.stylize, jobs.generate, jobs.evaluate, "
                                "jobs.assemble, gan.train.driver, gan.train.worker, gan.train.search, "
                                "gan.batch.engine, serve.app",
                                ("torchvision", "torchmetrics", "scipy", "torch._dynamo")) == []


def test_a_score_loads_neither_torchmetrics_nor_scipy():
    """MiFID, FID, KID and the memorization distance are computed with torch alone: importing torchmetrics (it loads
    torchvision and scipy) cost ~3 s of CPU in every process that scored, an evaluation's driver or each trial."""
    assert _loaded_by_importing("numpy, gan.eval.metrics", ("torchvision", "torchmetrics", "scipy", "torch._dynamo"),
                                "rng = numpy.random.default_rng(0)\n"
                                "gan.eval.metrics.mifid(rng.random((20, 8)), rng.random((12, 8)), rng.random((9, 8)))"
                                ) == []


def test_batch_tasks_the_zips_processes_and_a_runs_channel_start_without_torch():
    """Processes that only move bytes import only these modules: Ray Data's decode, read and write tasks (the stages
    in gan.batch.pipeline), the submission zip's checking processes (gan.batch.submission) and each training run's
    EpochChannel actor. Torch there would cost every such process ~1.5 s of CPU and ~200 MB for nothing."""
    assert _loaded_by_importing("gan.batch.pipeline, gan.batch.submission, gan.io.sources, gan.train.epoch_channel",
                                ("torch",)) == []
