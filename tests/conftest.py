"""Shared fixtures: one local Ray per test session, a real S3 endpoint (moto's server) on loopback, demo data."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from gan.ray_runtime import environ, free_port

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT.parent / "shared" / "data" / "gan-getting-started"
# The tests run their own Rays; a RAY_ADDRESS from the shell would send the jobs they start to another cluster.
os.environ.pop("RAY_ADDRESS", None)
# Ray Train's controller looks at its workers every 2 s, so a run ends up to 2 s after its last epoch; the suite's
# ~40 tiny runs (and the jobs its tests start in subprocesses, which inherit this) look every 0.25 s.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Each Train run also starts an actor that watches for nodes being drained (a cloud's preemption notice); no test
# drains a node, and on 2 cores its process costs every run ~1.5 s of CPU.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Ray's log monitor lists its logs folder every 0.1 s while it holds under 1,000 files, and the session's Ray starts
# ~550 worker processes (3 files each): above the threshold it lists every 0.5 s (its CPU after 300 workers: 2.8% ->
# 1.4% of a core, bench/ray_aging.py); workers' first lines may reach the driver up to 0.4 s later.
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "1")


def pytest_collection_modifyitems(session, config, items):
    """The tests that start Ray clusters of their own run first, before the shared one has started: after it, each
    of their modules would stop it and start it again (`without_shared_ray`), ~5 s a module."""
    items.sort(key=lambda item: "without_shared_ray" not in item.fixturenames)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint; code reaches it only through AWS_ENDPOINT_URL, like MinIO or R2."""
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with environ(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                 AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true"):
        yield url
        server.stop()


@pytest.fixture
def s3(s3_endpoint):
    """A boto3 client of that endpoint (boto3 imported here: a GPU image without it still runs the other tests)."""
    import boto3
    return boto3.client("s3")


@pytest.fixture
def bucket(s3, request):
    """A fresh bucket per test."""
    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:50]
    s3.create_bucket(Bucket=name)
    return name


S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def s3_env() -> dict:
    """The test S3 server's settings for a Ray's runtime_env (none on a GPU image without moto)."""
    return {k: os.environ[k] for k in S3_ENV if k in os.environ}

# Ray workers that torch.compile (the --compile training test) trace with Dynamo and AOTAutograd as on a GPU, but
# skip Inductor's C++ code generation (minutes on 2 cold cores); test_models checks Inductor's maths in-process.
COMPILE_ENV = {"TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"}


def start_shared_ray() -> None:
    """The session's local Ray (2 cores here: oversubscribed so actor pools leave room for read tasks), with the
    dashboard: it serves the State API that Ray Train's placement-group cleaner asks whether a run's driver lives,
    and `start_local_ray` tells its processes where, so another Ray on the machine does not stop the cleaner.
    Always a new one (`address="local"`): never a cluster that RAY_ADDRESS or another run's `ray start` names."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from gan.ray_runtime import start_local_ray
    start_local_ray(num_cpus=4, log_to_driver=True, runtime_env={"env_vars": {**s3_env(), **COMPILE_ENV}})


@pytest.fixture(scope="session")
def ray_cluster(request):
    """One local Ray for the session; tests that start their own clusters hand it back (`without_shared_ray`).
    Its workers reach the S3 endpoint, which starts first; on a machine without moto (the GPU image, where
    bench/gpu_checks.sh runs the CUDA tests) Ray starts without it and only the S3 tests cannot run."""
    import importlib
    import ray
    try:
        importlib.import_module("moto.server")
    except ImportError:
        pass
    else:
        request.getfixturevalue("s3_endpoint")
    start_shared_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def without_shared_ray(s3_endpoint):
    """For a module that starts its own Ray clusters: the shared one is stopped first and restarted after."""
    import ray
    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()
    if was_running:
        start_shared_ray()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from gan.train.demo_data import write_demo_data
    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, photos=24, paintings=12, seed=1)
    return out


@pytest.fixture(scope="session")
def kaggle_data() -> Path:
    if not KAGGLE.exists():
        pytest.skip(f"competition images not found at {KAGGLE} (see shared/data README)")
    return KAGGLE


@pytest.fixture(scope="session")
def cyclegan_ckpt(tmp_path_factory) -> str:
    """A small CycleGAN generator checkpoint (ngf 8, one block) for the batch jobs' tests."""
    import torch

    from gan.checkpoint import generator_checkpoint, to_bytes
    from gan.models.cyclegan import CycleGANConfig, ResnetGenerator
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "g.pt"
    path.write_bytes(to_bytes(generator_checkpoint("cyclegan", CycleGANConfig(ngf=8, n_blocks=1), ResnetGenerator(8, 1))))
    return str(path)


@dataclass(frozen=True)
class FinishedRun:
    """A finished tiny training run; tests that continue or damage it work on a copy (`copy_to`)."""
    folder: Path          # the run's folder: checkpoint_epoch_* and Ray Train's snapshot of them
    args: list[str]       # its settings' flags (the command less --epochs, --storage, --name and --export)
    export: Path          # what --export wrote: the best epoch's generator
    lines: list[str]      # what the command printed

    def copy_to(self, storage: Path) -> list[str]:
        """The run copied into `storage` under its name (Ray Train's snapshot names its checkpoints relative to the
        run's folder, so the copy continues as the original would); the flags that continue it there."""
        shutil.copytree(self.folder, storage / self.folder.name)
        return [*self.args, "--storage", str(storage), "--name", self.folder.name]


@pytest.fixture(scope="session")
def finished_run(ray_cluster, demo_data, tmp_path_factory) -> FinishedRun:
    """`jobs.train` of a tiny CycleGAN on two workers for 3 epochs, scored (pixel stand-in) every 2 epochs and at
    the last, its best epoch exported: one Train run for the tests of resuming, of damaged checkpoints and of a
    checkpoint of another kind, which each started from a run of their own before."""
    from jobs import train as train_job
    root = tmp_path_factory.mktemp("finished")
    args = ["--model", "cyclegan", "--data", str(demo_data), "--image-size", "32", "--ngf", "8", "--ndf", "8",
            "--n-blocks", "1", "--batch-size", "2", "--num-workers", "2", "--eval-features", "pixels",
            "--eval-photos", "8", "--eval-every", "2"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = train_job.main([*args, "--epochs", "3", "--storage", str(root / "runs"), "--name", "cg",
                               "--export", str(root / "g.pt")])
    assert code == 0, printed.getvalue()[-2000:]
    return FinishedRun(root / "runs" / "cg", args, root / "g.pt", printed.getvalue().splitlines())
