import io

import pytest
import torch

from gan.checkpoint import CheckpointError, from_bytes, generator_checkpoint, to_bytes
from gan.cyclegan import CycleGANConfig, ResnetGenerator
from gan.dcgan import DCGANConfig, DCGANGenerator


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
