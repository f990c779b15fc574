import io

import pytest
import torch

from gan.checkpoint import CheckpointError, from_bytes, generator_checkpoint, to_bytes
from gan.models.cyclegan import CycleGANConfig, ResnetGenerator
from gan.models.dcgan import DCGANConfig, DCGANGenerator


def test_cyclegan_checkpoint_rebuilds_an_identical_generator():
    cfg = CycleGANConfig(image_size=32, ngf=8, n_blocks=2)
    g = ResnetGenerator(cfg.ngf, cfg.n_blocks).eval()
    data = to_bytes(generator_checkpoint("cyclegan", cfg, g, epoch=3, step=42))
    torch.load(io.BytesIO(data), weights_only=True)  # loadable in the safe mode
    ckpt = from_bytes(data, "g.pt", expect_kind="cyclegan")
    assert (ckpt.kind, ckpt.epoch, ckpt.step, ckpt.image_size) == ("cyclegan", 3, 42, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ckpt.build()(x), g(x))


def test_dcgan_checkpoint_round_trip():
    cfg = DCGANConfig(image_size=64, ngf=8)
    g = DCGANGenerator(cfg).eval()
    ckpt = from_bytes(to_bytes(generator_checkpoint("dcgan", cfg, g)), "d.pt")
    z = torch.randn(2, 100)
    with torch.no_grad():
        assert torch.equal(ckpt.build()(z), g(z))


def test_bad_checkpoints_name_the_file():
    cfg = DCGANConfig(image_size=64, ngf=8)
    dc = to_bytes(generator_checkpoint("dcgan", cfg, DCGANGenerator(cfg)))
    with pytest.raises(CheckpointError, match=r"d\.pt: this is a dcgan generator, but this job needs a cyclegan"):
        from_bytes(dc, "d.pt", expect_kind="cyclegan")
    with pytest.raises(CheckpointError, match="x.pt: checkpoint file is empty"):
        from_bytes(b"", "x.pt")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        from_bytes(b"garbage" * 100, "junk.pt")
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(1)}, buf)
    with pytest.raises(CheckpointError, match="other.pt: not a generator checkpoint"):
        from_bytes(buf.getvalue(), "other.pt")
    # weights_only=True refuses pickled code
    buf = io.BytesIO()
    torch.save({"meta": object(), "state_dict": {}}, buf)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable checkpoint"):
        from_bytes(buf.getvalue(), "evil.pt")
    # config that does not match the weights
    ckpt = generator_checkpoint("cyclegan", CycleGANConfig(ngf=8, n_blocks=1), ResnetGenerator(8, 2))
    with pytest.raises(CheckpointError, match="m.pt: weights do not match"):
        from_bytes(to_bytes(ckpt), "m.pt")


def test_checkpoints_written_before_the_registry_still_load():
    """Files from before `arch` was recorded: meta is format, kind, config, epoch, step only."""
    import json
    cfg = CycleGANConfig(image_size=32, ngf=8, n_blocks=1)
    g = ResnetGenerator(cfg.ngf, cfg.n_blocks).eval()
    buf = io.BytesIO()
    meta = {"format": "gan-generator/1", "kind": "cyclegan", "config": cfg.to_dict(), "epoch": 2, "step": 9}
    torch.save({"meta": json.dumps(meta), "state_dict": g.state_dict()}, buf)
    ckpt = from_bytes(buf.getvalue(), "old.pt", expect_kind="cyclegan")
    assert ckpt.arch == "" and ckpt.epoch == 2
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ckpt.build()(x), g(x))
    # new files name their architecture, and a name the registry does not build is refused
    new = from_bytes(to_bytes(generator_checkpoint("cyclegan", cfg, g)), "new.pt")
    assert new.arch == "ResnetGenerator"
    meta["arch"] = "UnetGenerator"
    buf = io.BytesIO()
    torch.save({"meta": json.dumps(meta), "state_dict": g.state_dict()}, buf)
    with pytest.raises(CheckpointError, match="architecture 'UnetGenerator' is not what cyclegan builds"):
        from_bytes(buf.getvalue(), "other.pt")



@pytest.mark.parametrize("kind", ["cyclegan", "cut", "dcgan"])
def test_every_registered_kind_trains_and_round_trips_through_the_registry(kind):
    from gan.models.registry import get_model
    from gan.train.data import training_set, training_sources
    from gan.train.samples import sample_grid, sample_inputs
    from tests.helpers import image_bytes
    spec = get_model(kind)
    cfg = spec.build_config({"image_size": 64, "ngf": 8, "ndf": 8, **({"n_blocks": 1} if kind != "dcgan" else {})}, 2)
    images = {s: [(f"{i}.jpg", image_bytes(size=(80, 80), seed=i)) for i in range(4)] for s in training_sources(spec)}
    trainer = spec.trainer(cfg, "cpu", lambda m: m, seed=0)
    trainer.data_init(images)
    loader = torch.utils.data.DataLoader(training_set(spec, images, cfg), batch_size=2)
    batch = next(iter(loader))
    losses = trainer.step(*batch) if isinstance(batch, (list, tuple)) else trainer.step(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    grid = sample_grid(spec, trainer.generator, sample_inputs(spec, images, cfg, 2, 0))
    assert grid.startswith(b"\x89PNG")
    ckpt = from_bytes(to_bytes(generator_checkpoint(kind, cfg, trainer.generator)), f"{kind}.pt", expect_kind=kind)
    assert type(ckpt.build()).__name__ == ckpt.arch
