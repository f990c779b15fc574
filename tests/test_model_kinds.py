"""A model kind is one file and one registry entry: a toy kind defined in this file, named in $GAN_MODELS, trains
with `jobs.train`, stylizes with `jobs.stylize` and answers over Serve, with no change outside this file. And the
house's boundaries: the models import nothing above them, nothing in the batch jobs or Serve names a kind, and
every training setting has its flag."""
from __future__ import annotations

import ast
import os
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gan.models.inference import Stylize
from gan.models.spec import ModelSpec
from tests.conftest import ROOT, free_port
from tests.helpers import image_bytes


# --- the toy kind: a learned colour map (a 1x1 convolution that starts as the identity) ----------------------

@dataclass
class ToyConfig:
    image_size: int = 32
    toy_gain: float = 1.0   # a setting no other kind has: its flag must appear and reach the config
    lr: float = 1e-2
    epochs: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class ToyGenerator(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * cfg.toy_gain)
            self.mix.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x).clamp(-1, 1)


class ToyTrainer:
    """Moves the photos' mean colour towards the paintings' (a loss that could not be lower at the start)."""

    def __init__(self, cfg: ToyConfig, device="cpu", wrap=lambda m: m, seed: int = 0, precision: str = "auto",
                 compile=None):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.g = wrap(ToyGenerator(cfg).to(self.device))
        self.opt_g = torch.optim.Adam(self.g.parameters(), cfg.lr)

    @property
    def generator(self) -> nn.Module:
        return getattr(self.g, "module", self.g)

    def data_init(self, images: dict) -> None:
        self.paintings_seen = len(images["paintings"])

    def step(self, photos: torch.Tensor, paintings: torch.Tensor) -> dict[str, torch.Tensor]:
        self.opt_g.zero_grad()
        loss = F.mse_loss(self.g(photos.to(self.device)).mean((0, 2, 3)), paintings.to(self.device).mean((0, 2, 3)))
        loss.backward()
        self.opt_g.step()
        return {"loss_g": loss.detach()}

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"g": self.generator.state_dict(), "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["g"])
        self.opt_g.load_state_dict(state["opt_g"])


SPEC = ModelSpec("toy", ToyConfig, ToyGenerator, ToyTrainer, Stylize())


# --- the toy kind through the jobs and Serve --------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_ray(without_shared_ray):
    """A local Ray whose every worker, actor and replica sees $GAN_MODELS, as a cluster's runtime env would give."""
    import ray

    from gan.ray_runtime import start_local_ray
    from tests.conftest import s3_env
    os.environ["GAN_MODELS"] = __name__
    start_local_ray(num_cpus=4, runtime_env={"env_vars": {"GAN_MODELS": __name__, **s3_env()}})
    yield ray
    ray.shutdown()
    os.environ.pop("GAN_MODELS")


def test_a_kind_defined_in_a_test_trains_stylizes_and_serves(toy_ray, demo_data, tmp_path):
    from ray import serve

    from gan.checkpoint import from_bytes
    from gan.io.images import decode_image
    from jobs import stylize as stylize_job
    from jobs import train as train_job
    from serve.app import GanServer
    assert train_job.main(["--model", "toy", "--data", str(demo_data), "--epochs", "1", "--batch-size", "4",
                           "--toy-gain", "0.9", "--eval-features", "pixels", "--eval-photos", "4",
                           "--storage", str(tmp_path / "runs"), "--name", "toy", "--export", str(tmp_path / "t.pt")]) == 0
    ckpt = from_bytes((tmp_path / "t.pt").read_bytes(), "t.pt")
    assert (ckpt.kind, ckpt.arch, ckpt.config["toy_gain"]) == ("toy", "ToyGenerator", 0.9)
    assert not torch.equal(ckpt.state_dict["mix.weight"], torch.eye(3).view(3, 3, 1, 1) * 0.9)  # it trained

    out = tmp_path / "styled"
    assert stylize_job.main(["--checkpoint", str(tmp_path / "t.pt"), "--input", str(demo_data / "photo_jpg"),
                             "--output", str(out), "--no-progress"]) == 0
    assert len(list(out.glob("*.jpg"))) == 24

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(GanServer.options(user_config={"checkpoint": str(tmp_path / "t.pt")}).bind(), name="toy",
                  route_prefix="/")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/stylize", data=image_bytes(size=(64, 64)),
                                     method="POST", headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and decode_image(r.read(), "answer").shape == (256, 256, 3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as r:
            assert r.read() == b'{"status":"ok","stylize":true,"generate":false}'
    finally:
        serve.shutdown()


# --- the boundaries ------------------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_models_import_nothing_above_them():
    for path in sorted((ROOT / "gan" / "models").glob("*.py")):
        above = {m for m in _imports(path) if m.startswith(("gan.train", "gan.batch", "gan.eval", "serve", "jobs"))}
        assert not above, f"{path.name} imports {above}"


def test_the_batch_jobs_and_serve_name_no_model_kind():
    from gan.models.registry import known
    kinds = set(known())
    for path in sorted([*(ROOT / "gan" / "batch").glob("*.py"), *(ROOT / "serve").glob("*.py")]):
        strings = {node.value for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not strings & kinds, f"{path.name} names {strings & kinds}"


def test_every_training_setting_has_a_flag_and_every_flag_a_setting():
    from gan.models.registry import known
    from gan.train.settings import TrainSettings, model_fields, run_fields, searchable
    from jobs.train import JOB_FLAGS, build_parser
    flags = {a.dest for a in build_parser()._actions} - {"help"}
    settings = set(run_fields()) | set(model_fields())
    assert flags == settings | set(JOB_FLAGS)
    for spec in known().values():  # every kind's config field is a flag (the run's epochs stand for the model's)
        assert {f for f in spec.config.__dataclass_fields__} - set(run_fields()) <= flags, spec.kind
    # a search varies settings by the same names: the run's own, less what it cannot vary, and the kind's config
    allowed = searchable("cyclegan")
    assert allowed <= flags and "lambda_cycle" in allowed and "lr" in allowed and "batch_size" in allowed
    assert not allowed & {"photos", "paintings", "model", "eval_photos", "model_config"}
    assert set(TrainSettings().__dataclass_fields__) == set(run_fields()) | {"model_config"}
