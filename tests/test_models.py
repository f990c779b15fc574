import pytest
import torch

from gan.models.cyclegan import CycleGANConfig, CycleGANTrainer, PatchDiscriminator, ResnetGenerator, build_generator
from gan.models.dcgan import DCGANConfig, DCGANDiscriminator, DCGANGenerator, DCGANTrainer
from gan.models.diffaugment import diff_augment
from gan.models.image_pool import ImagePool
from gan.models.schedule import linear_decay
from tests.helpers import floats


def test_default_generator_matches_the_paper_size():
    g = ResnetGenerator()  # ngf=64, 9 blocks
    assert sum(p.numel() for p in g.parameters()) == 11_378_179


@pytest.mark.parametrize("size", [32, 64, 256])
def test_cyclegan_shapes(size):
    g, d = ResnetGenerator(ngf=8, n_blocks=2), PatchDiscriminator(ndf=8)
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert d(y).shape == (2, 1, size // 8 - 2, size // 8 - 2)  # 256 -> 30x30 patches


@pytest.mark.parametrize("size", [64, 128, 256])
def test_dcgan_shapes(size):
    cfg = DCGANConfig(image_size=size, ngf=8, ndf=8)
    g, d = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    x = g(torch.randn(3, 100))
    assert x.shape == (3, 3, size, size)
    assert d(x).shape == (3,)


def test_dcgan_rejects_other_sizes():
    with pytest.raises(ValueError, match="image_size"):
        DCGANConfig(image_size=96)


def _weights(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("augment", ["", "color,translation,cutout"])
def test_cyclegan_steps_change_weights_and_give_finite_losses(augment):
    cfg = CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=1, diffaugment=augment, pool_size=4)
    t = CycleGANTrainer(cfg)
    before = {k: _weights(getattr(t, k)) for k in ("g_ab", "g_ba", "d_a", "d_b")}
    for _ in range(3):
        losses = t.step(torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1)
        assert set(losses) == {"loss_g", "loss_cycle", "loss_identity", "loss_d"}
        assert all(torch.isfinite(v) for v in losses.values())
    for k, old in before.items():
        assert any(not torch.equal(a, b) for a, b in zip(old, _weights(getattr(t, k)))), k
    assert all(p.requires_grad for p in t.d_a.parameters())  # frozen only during the G step


def test_dcgan_steps_change_weights_and_give_finite_losses():
    t = DCGANTrainer(DCGANConfig(image_size=64, ngf=8, ndf=8, diffaugment="translation"))
    g0, d0 = _weights(t.g), _weights(t.d)
    for _ in range(3):
        losses = t.step(torch.rand(4, 3, 64, 64) * 2 - 1)
        assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, _weights(t.g)))
    assert any(not torch.equal(a, b) for a, b in zip(d0, _weights(t.d)))


def test_trainer_state_round_trip_continues_identically():
    cfg = CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=1, pool_size=2)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    t1 = CycleGANTrainer(cfg, seed=1)
    for _ in range(3):
        t1.step(a, b)
    state = t1.state_dict()
    t2 = CycleGANTrainer(cfg, seed=99)
    t2.load_state_dict(state)
    torch.manual_seed(5); l1 = floats(t1.step(a, b))
    torch.manual_seed(5); l2 = floats(t2.step(a, b))
    assert l1 == pytest.approx(l2, rel=1e-5)


def test_bf16_autocast_steps_match_fp32_and_checkpoints_load_in_either():
    """The fast path changes no maths: a bf16-autocast step gives fp32's losses within bf16 tolerance, weights
    stay fp32 (the optimizer's master copy), and the state of either loads in the other unchanged."""
    cfg = CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=2, pool_size=0)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    fp32, bf16 = CycleGANTrainer(cfg, seed=3, precision="fp32"), CycleGANTrainer(cfg, seed=3, precision="bf16")
    for _ in range(2):
        l32, l16 = floats(fp32.step(a, b)), floats(bf16.step(a, b))
        assert l16 != l32  # bf16 did run: the numbers are not bit-identical ...
        for k in l32:      # ... but the same within bf16's ~3 significant digits
            assert l16[k] == pytest.approx(l32[k], rel=0.03, abs=0.01), k
    for k in ("g_ab", "g_ba", "d_a", "d_b"):
        for p, q in zip(getattr(fp32, k).parameters(), getattr(bf16, k).parameters()):
            assert q.dtype == torch.float32 and (p - q).abs().max() < 2e-3, k  # two Adam steps of lr 2e-4 each
    for source, target in ((fp32, "bf16"), (bf16, "fp32")):
        other = CycleGANTrainer(cfg, seed=9, precision=target)
        other.load_state_dict(source.state_dict())
        for k in ("g_ab", "d_b"):
            assert all(torch.equal(p, q) for p, q in zip(getattr(source, k).parameters(),
                                                         getattr(other, k).parameters()))
        assert other.opt_g.state_dict()["state"][0]["exp_avg"].equal(source.opt_g.state_dict()["state"][0]["exp_avg"])
        assert all(torch.isfinite(v) for v in other.step(a, b).values())
    with pytest.raises(ValueError, match="precision must be one of"):
        CycleGANTrainer(cfg, precision="fp8").step(a, b)


def test_fused_adam_updates_as_the_plain_one_and_their_states_load_in_each_other():
    """Fused Adam (the CUDA default; also runs on CPU) is the same update: both trainers' weights agree after
    steps, and the state of either loads in the other, which keeps its own kernel and trains on."""
    from gan.models.dcgan import DCGANConfig, DCGANTrainer
    cfg = CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=1, pool_size=0)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    plain, fused = CycleGANTrainer(cfg, seed=3, fused=False), CycleGANTrainer(cfg, seed=3, fused=True)
    assert not plain.opt_g.param_groups[0]["fused"] and fused.opt_g.param_groups[0]["fused"]
    plain.step(a, b), fused.step(a, b)  # one step: same gradients, so the updates (lr 2e-4) agree to rounding
    for k in ("g_ab", "d_b"):           # (after more, the noise-sized gradients of biases before a norm differ)
        for p, q in zip(getattr(plain, k).parameters(), getattr(fused, k).parameters()):
            assert (p - q).abs().max() < 1e-6, k
    plain.step(a, b), fused.step(a, b)
    for source, kernel in ((plain, True), (fused, False)):
        other = CycleGANTrainer(cfg, seed=9, fused=kernel)
        other.load_state_dict(source.state_dict())
        assert all(g["fused"] == kernel for g in other.opt_g.param_groups + other.opt_d.param_groups)
        assert other.opt_g.state_dict()["state"][0]["exp_avg"].equal(source.opt_g.state_dict()["state"][0]["exp_avg"])
        assert all(torch.isfinite(v) for v in other.step(a, b).values())
    dc = DCGANTrainer(DCGANConfig(ngf=8, ndf=8), fused=True)
    dc.step(torch.rand(2, 3, 64, 64) * 2 - 1)
    back = DCGANTrainer(DCGANConfig(ngf=8, ndf=8), fused=False)
    back.load_state_dict(dc.state_dict())
    assert not back.opt_g.param_groups[0]["fused"] and all(torch.isfinite(torch.as_tensor(v))
                                                          for v in back.step(torch.rand(2, 3, 64, 64)).values())


@pytest.fixture
def inductor_without_simd():
    """Inductor's C++ kernels without SIMD: the same graphs, lowering and fusion, ~40% less compile time on 2 cores
    (its CPU vectoriser's tiling search is most of it), and nothing a GPU would run."""
    import torch._inductor.config
    with torch._inductor.config.patch({"cpp.simdlen": 0}):
        yield


def test_compiled_training_is_the_eager_maths_compiles_once_and_checkpoints_load_in_either(inductor_without_simd):
    """torch.compile (a GPU lever) changes no maths: the compiled step's losses and weights follow the eager
    step's, later steps reuse the graphs compiled at the first (no recompiles), and the state of either trainer
    loads in the other with the same keys. DCGAN's step (BatchNorm, a frozen D) compiles the same way."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    cfg = CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=1, pool_size=2)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    eager, fast = CycleGANTrainer(cfg, seed=3), CycleGANTrainer(cfg, seed=3, compile="default")
    graphs = []
    for i in range(3):  # the first step from the same weights: the same to rounding; after it, Adam turns the
        l1, l2 = floats(eager.step(a, b)), floats(fast.step(a, b))  # noise-sized gradients' rounding into lr-sized
        tol = 1e-5 if i == 0 else 0.01                               # steps either way, within bf16's tolerance
        assert all(l2[k] == pytest.approx(l1[k], rel=tol, abs=tol / 10) for k in l1), (i, l1, l2)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[-1] == graphs[0]  # compiled at the first step, reused after
    for k in ("g_ab", "g_ba", "d_a", "d_b"):  # 3 Adam steps of lr 2e-4; noise-sized gradients may flip sign
        assert all((p - q).abs().max() < 1.5e-3 for p, q in zip(getattr(eager, k).parameters(),
                                                                  getattr(fast, k).parameters())), k
    assert fast.state_dict().keys() == eager.state_dict().keys()
    for source, mode in ((fast, None), (eager, "default")):
        other = CycleGANTrainer(cfg, seed=9, compile=mode)
        other.load_state_dict(source.state_dict())
        assert all(torch.equal(p, q) for p, q in zip(source.generator.parameters(), other.generator.parameters()))
        assert all(torch.isfinite(v) for v in other.step(a, b).values())
    dc_eager, dc_fast = (DCGANTrainer(DCGANConfig(ngf=8, ndf=8), seed=1, compile=m) for m in (None, "default"))
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch._dynamo.config.patch(debug_backend_override=">=0:aot_eager"):  # Dynamo's and AOTAutograd's graphs
        for i in range(2):                                                       # (BatchNorm's buffer updates), not
            l1, l2 = floats(dc_eager.step(x)), floats(dc_fast.step(x))           # Inductor's C++ again: ~30 s cold
            tol = 1e-5 if i == 0 else 0.01
            assert all(l2[k] == pytest.approx(l1[k], rel=tol, abs=tol / 10) for k in l1), (i, l1, l2)
    with pytest.raises(ValueError, match="compile must be one of"):
        CycleGANTrainer(cfg, compile="fastest")


def test_channels_last_training_is_the_same_maths_and_saves_plain_weights():
    """channels_last (the CUDA default) only changes the memory layout: same losses as NCHW, and its state loads
    into an NCHW trainer (and the exported generator into a fresh one) with equal values."""
    cfg = CycleGANConfig(image_size=32, ngf=8, ndf=8, n_blocks=1, pool_size=0)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    nhwc, nchw = CycleGANTrainer(cfg, seed=1, channels_last=True), CycleGANTrainer(cfg, seed=1, channels_last=False)
    assert next(nhwc.d_a.parameters()).is_contiguous(memory_format=torch.channels_last)
    l1, l2 = floats(nhwc.step(a, b)), floats(nchw.step(a, b))
    assert all(l1[k] == pytest.approx(l2[k], rel=1e-4) for k in l1)
    other = CycleGANTrainer(cfg, seed=5, channels_last=False)
    other.load_state_dict(nhwc.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(nhwc.g_ab.parameters(), other.g_ab.parameters()))
    fresh = build_generator(cfg)
    fresh.load_state_dict(nhwc.generator.state_dict())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(fresh(x), nhwc.generator(x.contiguous(memory_format=torch.channels_last)), atol=1e-5)


def test_linear_decay_schedule():
    rule = linear_decay(epochs=10, decay_epochs=4)
    assert [rule(e) for e in range(6)] == [1.0] * 6
    assert rule(6) == pytest.approx(0.8) and rule(9) == pytest.approx(0.2)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rule)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # the order PyTorch expects (the step has no gradient, so it changes nothing)
        sched.step()
    assert lrs[:6] == [2e-4] * 6 and lrs[6] < lrs[5] and lrs[-1] == pytest.approx(2e-4 * 0.2)
    with pytest.raises(ValueError):
        linear_decay(5, 6)


def test_image_pool_fills_then_mixes_history():
    pool = ImagePool(size=3, seed=0)
    first = torch.arange(3).float().view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returns what it is given
    newer = torch.full((200, 1, 1, 1), 9.0)
    out = pool.query(newer)
    old = (out != 9).sum().item()
    assert out.shape == newer.shape and 0 < old <= 3  # some come from the history, at most the 3 originals
    assert len(pool.images) == 3
    state = pool.state_dict()
    p2 = ImagePool(size=3, seed=123)
    p2.load_state_dict(state)
    x = torch.rand(20, 1, 1, 1)
    assert torch.equal(pool.query(x), p2.query(x))
    assert torch.equal(ImagePool(size=0).query(x), x)
    p3 = ImagePool(size=3)
    p3.load_state_dict(state, device="meta")  # restored onto the trainer's device (cuda after a GPU resume)
    assert all(img.device.type == "meta" for img in p3.images)


def test_diffaugment_keeps_shape_and_gradient():
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    cut = diff_augment(torch.ones(8, 3, 32, 32), "cutout")
    zeros = (cut == 0).float().mean().item()
    assert 0.1 < zeros < 0.3  # a half-size square is a quarter of the area, less where it overhangs
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        diff_augment(x, "blur")
