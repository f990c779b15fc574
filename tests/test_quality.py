"""Quality measured during training: the best epoch kept and the score curve (a trained run's scores every K
epochs and its exported best are tested on tests/test_train.py's run), and the recipe's model variants
(resize-convolution, EMA) through checkpoints, stylize and Serve."""
import io

import pytest
import torch
from PIL import Image

from gan.batch.engine import BatchOptions
from gan.batch.stylize import stylize
from gan.checkpoint import from_bytes
from gan.io.storage import open_storage
from gan.train.quality import SCORE, Best, curve_png
from jobs import train as train_job


def test_the_best_epoch_is_kept_not_the_last():
    best = Best()
    for epoch, score in enumerate([5.0, 3.0, 4.0]):
        best.update(epoch, score, f"g{epoch}".encode(), b"")
    assert (best.epoch, best.score, best.generator) == (1, 3.0, b"g1")


def test_the_score_curve_is_a_picture_of_the_scored_epochs():
    history = [{"epoch": 0}, {"epoch": 1, SCORE: 40.0, "eval_features": "pixels"},
               {"epoch": 2}, {"epoch": 3, SCORE: 30.0, "eval_features": "pixels"}]
    img = Image.open(io.BytesIO(curve_png(history)))
    assert img.size == (640, 360)
    assert len(set(img.getdata())) > 3  # axes, the line, the best point


def test_resize_conv_and_ema_generators_load_in_stylize_and_serve(ray_cluster, demo_data, tmp_path):
    """The generator that training exports for these variants (the trainer's `generator`: with ema its moving
    average) loads in stylize and in a Serve replica. That a trained run's export carries its upsample and ema:
    test_tune's best generator; the average in the training state, so a resume continues it: asserted here."""
    from gan.checkpoint import generator_checkpoint, to_bytes
    from gan.models.cyclegan import CycleGANConfig, CycleGANTrainer
    cfg = CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=1, upsample="resize", ema=0.9)
    trainer = CycleGANTrainer(cfg)
    assert "ema" in trainer.state_dict()
    (tmp_path / "g.pt").write_bytes(to_bytes(generator_checkpoint("cyclegan", cfg, trainer.generator)))
    ckpt = from_bytes((tmp_path / "g.pt").read_bytes(), "g.pt", expect_kind="cyclegan")
    assert ckpt.config["upsample"] == "resize" and ckpt.config["ema"] == 0.9
    assert any(isinstance(m, torch.nn.Upsample) for m in ckpt.build().modules())
    result = stylize(str(demo_data / "photo_jpg"), BatchOptions(checkpoint=str(tmp_path / "g.pt"),
                                                                output=open_storage(str(tmp_path / "out")),
                                                                progress=False))
    assert result.report["counts"]["outputs"] == 24
    import asyncio
    import inspect

    from serve.app import GanServer
    cls = GanServer.func_or_class  # the replica class itself; Serve's ingress makes its __init__ a coroutine
    replica = cls.__new__(cls)
    init = cls.__init__(replica)
    if inspect.isawaitable(init):
        asyncio.run(init)
    replica.reconfigure({"checkpoint": str(tmp_path / "g.pt")})
    from gan.models.inference import Photos
    assert any(isinstance(m, torch.nn.Upsample) for m in replica.models[Photos][1].modules())


def test_a_residual_generator_starts_as_the_identity_and_round_trips():
    from gan.checkpoint import generator_checkpoint, to_bytes
    from gan.models.cyclegan import CycleGANConfig, build_generator
    cfg = CycleGANConfig(image_size=32, ngf=8, n_blocks=1, upsample="resize", residual=True)
    g = build_generator(cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(g(x), x)  # the photo itself until training changes it
    plain = build_generator(CycleGANConfig(image_size=32, ngf=8, n_blocks=1))
    assert not torch.allclose(plain(x), x, atol=0.1)
    with torch.no_grad():
        g.model[-2].bias.fill_(0.5)  # a learned change: + tanh(0.5), clamped to the image range
    assert torch.allclose(g(x), (x + torch.tanh(torch.tensor(0.5))).clamp(-1, 1))
    loaded = from_bytes(to_bytes(generator_checkpoint("cyclegan", cfg, g)), "g.pt").build()
    assert loaded.residual and torch.equal(loaded(x), g(x))


def test_crop_preprocessing_trains_on_pieces_at_the_scale_of_inference():
    import numpy as np

    from gan.io.images import encode_jpeg
    from gan.models.cyclegan import SPEC, CycleGANConfig
    from gan.train.data import training_set
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    images = {"photos": [("p.jpg", encode_jpeg(pixels))], "paintings": [("m.jpg", encode_jpeg(pixels))]}
    crop = training_set(SPEC, images, CycleGANConfig(image_size=64, preprocess="crop")).photos
    paper = training_set(SPEC, images, CycleGANConfig(image_size=64, preprocess="resize_and_crop")).photos
    assert crop.load_size == 256 and paper.load_size == 72  # crop: a 64 px piece of the 256 px photo
    assert crop[0].shape == paper[0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        CycleGANConfig(preprocess="zoom")


def test_the_cpu_recipe_is_the_measured_one_and_flags_override_it():
    _, s = train_job.parse(["--recipe", "kaggle-cpu", "--data", "d", "--ngf", "8"])
    cfg = s.build_model_config()
    assert s.model == "cut" and (cfg.residual, cfg.colour, cfg.colour_lightness, cfg.preprocess, cfg.image_size,
                                 cfg.lambda_nce, cfg.ema, cfg.diffaugment, cfg.strength) == (
        True, True, True, "crop", 64, 1.0, 0.995, "translation,cutout", 0.7)
    # scored once, at the end of the LR decay: the exported generator is the last EMA
    assert cfg.lr == 4e-4 and cfg.ngf == 8 and s.batch_size == 8 and s.eval_every == 10 and s.cpus_per_worker == 2.0
    assert (s.epochs, cfg.decay_epochs) == (10, 5)  # the LR decays over the second half
    _, old = train_job.parse(["--recipe", "cyclegan-cpu", "--data", "d"])  # the CycleGAN recipe, still by name
    assert old.model == "cyclegan" and old.build_model_config().lambda_cycle == 1.0
    _, g = train_job.parse(["--recipe", "kaggle", "--data", "d", "--epochs", "2"])  # the GPU recipe: full size
    cfg = g.build_model_config()
    assert (cfg.image_size, cfg.ngf, cfg.n_blocks, cfg.upsample, cfg.residual, cfg.ema) == (256, 64, 9, "resize", True, 0.999)
    assert g.use_gpu and g.batch_size == 4 and g.epochs == 2 and cfg.decay_epochs == 1  # the second half of any length


def test_the_colour_transfer_moves_lab_statistics_and_lightness_histograms_to_the_target():
    from gan.models.colour import ColourTransfer, lab_stats, lightness_quantiles, rgb_to_lab, target_stats
    gen = torch.Generator().manual_seed(0)
    photos = torch.rand(3, 3, 64, 64, generator=gen) * 1.2 - 0.9        # bright-ish, wide
    paintings = torch.rand(5, 3, 64, 64, generator=gen) ** 2 * 0.8 - 0.3  # another palette and contrast curve
    transfer = ColourTransfer()
    assert torch.equal(transfer(photos), photos)  # no target yet: the identity
    mean, std = target_stats(paintings)
    transfer.set_target(mean, std)
    got_mean, got_std = lab_stats(transfer(photos))
    assert torch.allclose(got_mean, mean.expand(3, 3), atol=1.0) and torch.allclose(got_std, std.expand(3, 3), atol=1.0)
    # Lightness by histogram: each photo's L* quantiles become the paintings' pooled ones (a/b as Reinhard's).
    lightness = lightness_quantiles(paintings)
    transfer.set_target(mean, std, lightness)
    lum = rgb_to_lab(transfer(photos))[:, 0].flatten(1)
    probe = torch.tensor([0.1, 0.5, 0.9])
    want = torch.quantile(rgb_to_lab(paintings)[:, 0].flatten(), probe)
    assert torch.allclose(torch.quantile(lum, probe, dim=1).T, want.expand(3, 3), atol=1.5)
    assert not torch.allclose(lab_stats(photos)[0][:, 0], mean[0].expand(3), atol=5)  # it did move them
    # A generator saved before the lightness option loads as it was trained: Reinhard's transfer throughout.
    old = {k: v for k, v in transfer.state_dict().items() if k != "lightness"}
    loaded = ColourTransfer()
    loaded.load_state_dict(old)
    assert not loaded.lightness.any() and torch.allclose(lab_stats(loaded(photos))[1], std.expand(3, 3), atol=1.0)


@pytest.mark.parametrize("generator", ["resnet", "unet"])
def test_the_strength_blends_the_painting_with_the_staged_photo_at_inference_only(generator):
    """strength s: in eval mode (scoring, export, the jobs, Serve) the output is s of the way from the colour-staged
    photo to the network's painting; training sees the whole painting; the checkpoint keeps s (old files: 1)."""
    from gan.checkpoint import generator_checkpoint, to_bytes
    from gan.models.cut import CUTConfig, build_generator
    sizes = {"image_size": 32, "generator": generator, "ngf": 8, "n_blocks": 1, "n_down": 2, "colour": True}
    torch.manual_seed(0)
    full = build_generator(CUTConfig(**sizes))
    with torch.no_grad():
        full.colour.set_target(torch.tensor([60.0, 5.0, 10.0]), torch.tensor([15.0, 8.0, 12.0]))
        for p in full.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # a trained-looking change, not the identity it starts as
    half = build_generator(CUTConfig(**sizes, strength=0.5))
    half.load_state_dict(full.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    full.eval(), half.eval()
    with torch.no_grad():
        staged, painting = full.colour(x), full(x)
        assert not torch.allclose(painting, staged, atol=0.05)
        assert torch.allclose(half(x), staged + 0.5 * (painting - staged), atol=1e-5)
        half.train()
        assert torch.allclose(half(x), painting, atol=1e-5)  # the losses see all of the painting
        half.eval()
        loaded = from_bytes(to_bytes(generator_checkpoint("cut", CUTConfig(**sizes, strength=0.5), half)),
                            "g.pt").build()
        assert loaded.strength == 0.5 and torch.allclose(loaded(x), half(x), atol=1e-6)
        before = generator_checkpoint("cut", CUTConfig(**sizes), full)  # a file from before the option
        del before.config["strength"]
        assert from_bytes(to_bytes(before), "g.pt").build().strength == 1.0
    with pytest.raises(ValueError, match="strength must be in"):
        CUTConfig(strength=-0.1)
