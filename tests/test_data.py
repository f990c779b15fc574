import io

import numpy as np
import pytest
import torch

from gan.train.data import DataError, DeviceLoader, ImageDataset, UnpairedDataset, decoded_bytes, load_encoded_images
from gan.train.demo_data import write_demo_data
from gan.io.images import BadImageError, decode_image, encode_jpeg
from gan.io.sources import read_input, scan_inputs
from gan.io.storage import LocalStorage
from gan.io.tfrecord import TFRecordError, encode_example, read_image_examples, write_image_examples, write_record
from tests.helpers import BROKEN, GOOD_ODD, image_bytes, write_files


def test_tfrecord_round_trip_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    items = [(f"img{i}", encode_jpeg(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))) for i in range(5)]
    path = tmp_path / "x.tfrec"
    with open(path, "wb") as f:
        write_image_examples(f, items, "monet")
    back = list(read_image_examples(path.read_bytes(), str(path)))
    assert [n for n, _ in back] == [n for n, _ in items]
    for (_, a), (_, b) in zip(items, back):
        assert np.array_equal(decode_image(a, "a"), decode_image(b, "b"))


def test_reads_the_real_kaggle_tfrecords(kaggle_data):
    files = sorted((kaggle_data / "monet_tfrec").glob("*.tfrec"))
    names = set()
    for f in files:
        for name, jpeg in read_image_examples(f.read_bytes(), f.name):
            pixels = decode_image(jpeg, name)
            assert pixels.shape == (256, 256, 3)
            names.add(name)
    jpg_names = {p.stem for p in (kaggle_data / "monet_jpg").glob("*.jpg")}
    assert len(names) == 240 and names == jpg_names
    name = sorted(names)[0]
    f = next(f for f in files if name in {n for n, _ in read_image_examples(f.read_bytes(), f.name)})
    jpeg = dict(read_image_examples(f.read_bytes(), f.name))[name]
    from_jpg = decode_image((kaggle_data / "monet_jpg" / f"{name}.jpg").read_bytes(), name)
    # the Kaggle TFRecords hold a separate JPEG encoding of the same painting: same picture, not same bytes
    corr = np.corrcoef(decode_image(jpeg, name).ravel(), from_jpg.ravel())[0, 1]
    other = decode_image((kaggle_data / "monet_jpg" / f"{sorted(names)[1]}.jpg").read_bytes(), "other")
    assert corr > 0.97 and np.corrcoef(other.ravel(), from_jpg.ravel())[0, 1] < 0.9


def test_tfrecord_bad_checksum_and_missing_feature(tmp_path):
    buf = io.BytesIO()
    write_image_examples(buf, [("a", image_bytes()), ("b", image_bytes(seed=1))], "photo")
    data = bytearray(buf.getvalue())
    data[100] ^= 0xFF  # flip a byte inside the first record's payload
    with pytest.raises(TFRecordError, match=r"bad\.tfrec: record 0: bad data checksum"):
        list(read_image_examples(bytes(data), "bad.tfrec"))
    data = bytearray(buf.getvalue())
    data[3] ^= 0x01  # the length field
    with pytest.raises(TFRecordError, match="bad length checksum"):
        list(read_image_examples(bytes(data), "bad.tfrec"))
    with pytest.raises(TFRecordError, match="truncated"):
        list(read_image_examples(buf.getvalue()[:-10], "cut.tfrec"))
    buf2 = io.BytesIO()
    write_record(buf2, encode_example({"image_name": b"x", "target": b"photo"}))
    with pytest.raises(TFRecordError, match=r"nofeat\.tfrec: record 0: missing feature 'image'"):
        list(read_image_examples(buf2.getvalue(), "nofeat.tfrec"))


@pytest.mark.parametrize("name", sorted(GOOD_ODD))
def test_odd_images_are_converted(name):
    pixels = decode_image(GOOD_ODD[name](), name, size=64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_non_square_is_centre_cropped():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # white centre square, black sides
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    out = decode_image(buf.getvalue(), "wide.png", size=50)
    assert out.min() > 240  # only the centre square remains


@pytest.mark.parametrize("name,reason", [("empty.jpg", "empty"), ("notes.jpg", "not an image"),
                                         ("truncated.jpg", "truncated"), ("corrupt.png", "corrupt"),
                                         ("bomb.png", "decompression bomb")])
def test_broken_images_name_the_file_and_the_problem(name, reason):
    with pytest.raises(BadImageError) as e:
        decode_image(BROKEN[name](), f"folder/{name}")
    assert str(e.value).startswith(f"folder/{name}: ") and reason in str(e.value)


def test_demo_data_layout_and_counts(tmp_path):
    counts = write_demo_data(tmp_path, photos=7, paintings=65, seed=3)
    assert counts == {"photo_jpg": 7, "monet_jpg": 65}
    assert len(list((tmp_path / "photo_jpg").glob("*.jpg"))) == 7
    assert len(list((tmp_path / "monet_jpg").glob("*.jpg"))) == 65
    assert sorted(p.name for p in (tmp_path / "monet_tfrec").iterdir()) == ["monet00-60.tfrec", "monet01-5.tfrec"]
    names = [n for f in sorted((tmp_path / "monet_tfrec").iterdir()) for n, _ in read_image_examples(f.read_bytes(), f.name)]
    assert sorted(names) == sorted(p.stem for p in (tmp_path / "monet_jpg").glob("*.jpg"))
    photo = decode_image((tmp_path / "photo_jpg" / f"{sorted(p.stem for p in (tmp_path / 'photo_jpg').glob('*'))[0]}.jpg").read_bytes(), "p")
    assert photo.shape == (256, 256, 3)
    # seeded: the same seed gives the same files, another seed others
    again = tmp_path / "again"
    write_demo_data(again, photos=7, paintings=1, seed=3)
    assert sorted(p.name for p in (again / "photo_jpg").iterdir()) == sorted(p.name for p in (tmp_path / "photo_jpg").iterdir())
    # the two domains differ in style: paintings are smoother (less high-frequency energy) and brighter
    def roughness(folder):
        arrs = [decode_image(p.read_bytes(), p.name).astype(float) for p in sorted(folder.glob("*.jpg"))[:5]]
        return np.mean([np.abs(np.diff(a, axis=1)).mean() for a in arrs]), np.mean([a.mean() for a in arrs])
    (rough_p, bright_p), (rough_m, bright_m) = roughness(tmp_path / "photo_jpg"), roughness(tmp_path / "monet_jpg")
    assert bright_m > bright_p and rough_m < 0.8 * rough_p


def test_scan_and_read_folder_and_tfrecords(demo_data):
    storage = LocalStorage(str(demo_data))
    items, rejected = scan_inputs(storage, "photo_tfrec")
    assert len(items) == 24 and not rejected
    assert items[0].name.startswith("photo00-24.tfrec/")
    jpg = storage.read(f"photo_jpg/{items[0].name.split('/')[-1]}.jpg")
    assert read_input(storage, items[0]) == jpg
    items, _ = scan_inputs(storage, "monet_jpg")
    assert len(items) == 12 and all(i.length == -1 for i in items)


def test_corrupt_tfrecord_file_is_a_rejected_line_not_a_crash(tmp_path, demo_data):
    data = bytearray((demo_data / "photo_tfrec" / "photo00-24.tfrec").read_bytes())
    data[-50] ^= 0xFF  # corrupt the last record
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.tfrec").write_bytes(bytes(data))
    items, rejected = scan_inputs(LocalStorage(str(tmp_path)), "in")
    assert len(items) == 23 and len(rejected) == 1 and "bad data checksum" in rejected[0].reason


def test_load_encoded_images_skips_bad_files_and_errors_on_empty(tmp_path):
    write_files(tmp_path / "mixed", {"good.jpg": image_bytes, **BROKEN})
    images, rejected = load_encoded_images(str(tmp_path / "mixed"))
    assert [n for n, _ in images] == ["good.jpg"] and len(rejected) == len(BROKEN)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no files found"):
        load_encoded_images(str(tmp_path / "empty"))
    write_files(tmp_path / "allbad", BROKEN)
    with pytest.raises(DataError, match="no usable images"):
        load_encoded_images(str(tmp_path / "allbad"))


def test_datasets_give_augmented_tensors(demo_data):
    photos, _ = load_encoded_images(str(demo_data / "photo_jpg"))
    paintings, _ = load_encoded_images(str(demo_data / "monet_tfrec"))
    ds = UnpairedDataset(ImageDataset(photos, 32, jitter=True), ImageDataset(paintings, 32, jitter=True))
    assert len(ds) == 24
    a, b = ds[0]
    assert a.shape == b.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1
    # augmentation (crop, flip, the painting drawn) follows (seed, epoch, index), not the process's RNG: another
    # worker or loader process building the same item gets the same tensors, another epoch other crops
    other = UnpairedDataset(ImageDataset(photos, 32, jitter=True), ImageDataset(paintings, 32, jitter=True))
    torch.manual_seed(0); x = [ds[i] for i in range(4)]
    torch.manual_seed(1); y = [other[i] for i in range(4)]
    assert all(torch.equal(p, q) and torch.equal(u, v) for (p, u), (q, v) in zip(x, y))
    other.set_epoch(1, seed=0)
    assert any(not torch.equal(p, q) for (p, _), (q, _) in zip(x, [other[i] for i in range(4)]))
    ds.set_epoch(1, seed=7)
    assert any(not torch.equal(p, q) for (p, _), (q, _) in zip(x, [ds[i] for i in range(4)]))


@pytest.mark.parametrize("kind", ["cyclegan", "dcgan"])
def test_data_on_the_device_gives_the_dataloaders_batches(demo_data, kind):
    """DeviceLoader (images decoded once into the device's memory, cut there) yields exactly the DataLoader's
    batches: same items for this rank, same crops and flips, same normalisation; on CUDA too when present."""
    photos, _ = load_encoded_images(str(demo_data / "photo_jpg"))
    paintings, _ = load_encoded_images(str(demo_data / "monet_tfrec"))
    if kind == "cyclegan":
        ds = UnpairedDataset(ImageDataset(photos, 32, jitter=True), ImageDataset(paintings, 32, jitter=True))
    else:
        ds = ImageDataset(paintings, 32)  # DCGAN's: the whole image, no crop or flip
    assert decoded_bytes(ds) == sum(len(p) * p.load_size ** 2 * 3 for p in ds.parts)
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3, drop_last=True)
    plain = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, drop_last=True)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for device in devices:
        on_device = DeviceLoader(ds, sampler, 3, device)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch, seed=3)
            expected, got = list(plain), list(on_device)
            assert len(got) == len(expected) == len(on_device) == len(plain) > 1
            for want, have in zip(expected, got):
                want, have = (want, have) if kind == "cyclegan" else ([want], [have])
                assert len(have) == len(want)
                for w, h in zip(want, have):
                    assert h.device.type == device and h.shape == w.shape and torch.equal(h.cpu(), w)
    flips = [ds.crops(i)[0].flip for i in range(len(ds))] if kind == "cyclegan" else []
    assert kind == "dcgan" or (any(flips) and not all(flips))  # the comparison covered flipped and plain crops


def test_written_files_get_the_mode_a_plain_open_gives_not_the_temp_files_0600(tmp_path):
    """Outputs and zips are written to a temp file, then renamed: they must not keep mkstemp's owner-only mode."""
    import os
    storage = LocalStorage(str(tmp_path))
    for umask in (0o022, 0o027):
        old = os.umask(umask)
        try:
            storage.write(f"{umask:o}.jpg", b"x")
            with storage.open_write(f"{umask:o}.zip") as f:
                f.write(b"y")
        finally:
            os.umask(old)
        for name in (f"{umask:o}.jpg", f"{umask:o}.zip"):
            assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
