"""Integrity of batch outputs: the manifest is the contract, no input is lost, evaluation never scores its own files.

Each test here failed on the code before the manifest contract (one per defect of the integrity review)."""
import io
import json
import os
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gan.batch.engine import MANIFEST, REPORT, BatchOptions, JobMismatchError
from gan.batch.generate import generate
from gan.batch.stylize import stylize
from gan.batch.submission import assemble
from gan.checkpoint import generator_checkpoint, to_bytes
from gan.eval.evaluate import EvalOptions, evaluate
from gan.io.images import MAX_BYTES, decode_image
from gan.io.sources import read_input, scan_inputs, scan_uri
from gan.io.storage import LocalStorage, open_storage
from gan.io.tfrecord import encode_example, write_record
from gan.models.cyclegan import CycleGANConfig, ResnetGenerator
from gan.models.dcgan import DCGANConfig, DCGANGenerator
from tests.helpers import image_bytes, write_files


def _ckpt(path: Path, kind: str, seed: int) -> str:
    torch.manual_seed(seed)
    if kind == "cyclegan":
        data = to_bytes(generator_checkpoint("cyclegan", CycleGANConfig(ngf=8, n_blocks=1), ResnetGenerator(8, 1)))
    else:
        cfg = DCGANConfig(image_size=64, ngf=8)
        g = DCGANGenerator(cfg)
        for m in g.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.data.normal_(0, 0.3)
        data = to_bytes(generator_checkpoint("dcgan", cfg, g))
    path.write_bytes(data)
    return str(path)


def opts(ckpt, out, **kw) -> BatchOptions:
    return BatchOptions(checkpoint=ckpt, output=open_storage(str(out)), batch_size=4, progress=False, **kw)


def _pixels(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), path.name).astype(int)


# 1. a rerun with other settings never mixes runs; assemble zips exactly the manifest's outputs
def test_a_rerun_with_another_seed_or_count_is_refused_or_overwritten(ray_cluster, tmp_path):
    ckpt = _ckpt(tmp_path / "d.pt", "dcgan", 0)
    out = tmp_path / "out"
    generate(5, 0, opts(ckpt, out))
    with pytest.raises(JobMismatchError, match=r"holds a different generate job \(seed 0 -> 1\).*--overwrite"):
        generate(5, 1, opts(ckpt, out))
    generate(5, 1, opts(ckpt, tmp_path / "fresh"))
    generate(3, 1, opts(ckpt, out, overwrite=True))
    assert sorted(p.name for p in out.glob("*.jpg")) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    for n in ("00000.jpg", "00002.jpg"):  # seed 1's images now, not seed 0's leftovers (those differ by > 10)
        assert np.abs(_pixels(out / n) - _pixels(tmp_path / "fresh" / n)).mean() < 1
    z = assemble(open_storage(str(out)), str(tmp_path / "images.zip"), min_images=1)
    assert z["images"] == 3
    (out / "00004.jpg").write_bytes((tmp_path / "fresh" / "00004.jpg").read_bytes())  # a stray file
    with zipfile.ZipFile(assemble(open_storage(str(out)), str(tmp_path / "again.zip"), min_images=1)["zip"]) as zf:
        assert sorted(zf.namelist()) == ["00000.jpg", "00001.jpg", "00002.jpg"]


def test_another_checkpoint_into_the_same_folder_is_refused(ray_cluster, demo_data, tmp_path):
    out = tmp_path / "out"
    stylize(str(demo_data / "photo_jpg"), opts(_ckpt(tmp_path / "a.pt", "cyclegan", 0), out))
    with pytest.raises(JobMismatchError, match="checkpoint"):
        stylize(str(demo_data / "photo_jpg"), opts(_ckpt(tmp_path / "b.pt", "cyclegan", 1), out))


def test_outputs_that_no_manifest_owns_are_not_taken_as_done(ray_cluster, tmp_path):
    ckpt = _ckpt(tmp_path / "d.pt", "dcgan", 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000.jpg").write_bytes(image_bytes())
    with pytest.raises(JobMismatchError, match="00000.jpg"):
        generate(2, 0, opts(ckpt, out))


# 2. the fingerprint covers input contents, not names only
def test_a_changed_or_fixed_input_is_a_different_job(ray_cluster, tmp_path):
    ckpt = _ckpt(tmp_path / "g.pt", "cyclegan", 0)
    src = tmp_path / "in"
    write_files(src, {f"p{i}.jpg": (lambda i=i: image_bytes(seed=i)) for i in range(3)})
    (src / "broken.jpg").write_bytes(b"not yet an image")
    out = tmp_path / "out"
    first = stylize(str(src), opts(ckpt, out))
    assert first.report["counts"]["rejected"] == 1
    (src / "broken.jpg").write_bytes(image_bytes(seed=9))  # fixed
    (src / "p1.jpg").write_bytes(image_bytes(seed=7))      # changed
    with pytest.raises(JobMismatchError, match=r"2 inputs changed \(broken.jpg, p1.jpg\)"):
        stylize(str(src), opts(ckpt, out))
    again = stylize(str(src), opts(ckpt, out, overwrite=True))
    assert again.report["counts"]["outputs"] == 4 and again.report["counts"]["rejected"] == 0


# 3. repeated names: one output per input, and the counts add up
def _tfrecord(records: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    for name, jpeg in records:
        write_record(buf, encode_example({"image_name": name.encode(), "image": jpeg, "target": b"photo"}))
    return buf.getvalue()


def test_repeated_names_in_a_zip_and_a_tfrecord_give_one_output_each(ray_cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    with zipfile.ZipFile(src / "photos.zip", "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for seed in (1, 2, 3):
            zf.writestr("a.jpg", image_bytes(seed=seed))
    (src / "photos-3.tfrec").write_bytes(_tfrecord([("a", image_bytes(seed=s)) for s in (4, 5, 6)]))
    result = stylize(str(src), opts(_ckpt(tmp_path / "g.pt", "cyclegan", 0), tmp_path / "out"))
    c = result.report["counts"]
    assert c["inputs"] == 6 and c["outputs"] == 6 and c["rejected"] == 0
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 6


# 4. a bad data checksum loses one record; a broken frame loses the rest, counted per record when knowable
def test_tfrecord_damage_rejects_only_what_it_must(tmp_path):
    records = [(f"r{i}", image_bytes(seed=i, size=(32, 32))) for i in range(5)]
    data = bytearray(_tfrecord(records))
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += 12 + struct.unpack("<Q", data[pos:pos + 8])[0] + 4
    folder = tmp_path / "tf"
    folder.mkdir()
    bad_data = bytearray(data)
    bad_data[starts[2] + 40] ^= 0xFF  # inside record 2's payload: its data CRC fails, the framing is intact
    (folder / "a-5.tfrec").write_bytes(bad_data)
    bad_frame = bytearray(data)
    bad_frame[starts[2] + 9] ^= 0xFF  # record 2's length CRC: nothing after it can be located
    (folder / "b-5.tfrec").write_bytes(bad_frame)
    (folder / "c.tfrec").write_bytes(bad_frame)  # no count in the name
    items, rejected = scan_inputs(LocalStorage(str(folder)))
    names = sorted(i.name for i in items)
    assert names == ["a-5.tfrec/r0", "a-5.tfrec/r1", "a-5.tfrec/r3", "a-5.tfrec/r4",
                     "b-5.tfrec/r0", "b-5.tfrec/r1", "c.tfrec/r0", "c.tfrec/r1"]
    by_name = {r.name: r.reason for r in rejected}
    assert "bad data checksum" in by_name["a-5.tfrec#record2"]
    assert [n for n in by_name if n.startswith("b-5")] == ["b-5.tfrec#record2", "b-5.tfrec#record3",
                                                         "b-5.tfrec#record4"]
    assert [n for n in by_name if n.startswith("c.")] == ["c.tfrec#record2+"]
    in_ab = [n for n in names if not n.startswith("c.")] + [n for n in by_name if not n.startswith("c.")]
    assert len(in_ab) == 5 + 5  # a and b: every record is an input or a reject line


# 5. evaluation writes beside the set it scores, so a second evaluation scores the same images
def test_evaluating_a_folder_twice_scores_the_same_images(ray_cluster, demo_data, tmp_path):
    folder = tmp_path / "gen"
    for p in sorted((demo_data / "photo_jpg").glob("*.jpg"))[:6]:
        (folder / p.name).parent.mkdir(exist_ok=True)
        (folder / p.name).write_bytes(p.read_bytes())
    o = EvalOptions(features="pixels", progress=False)
    first = evaluate(str(folder), str(demo_data / "monet_jpg"), None, o)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (demo_data / "photo_jpg").glob("*.jpg"))[:6]
    assert (tmp_path / "gen.evaluation.json").is_file() and (tmp_path / "gen.contact_sheet.png").is_file()
    second = evaluate(str(folder), str(demo_data / "monet_jpg"), None, o)
    assert second["counts"] == first["counts"] and second["fid"] == pytest.approx(first["fid"])


# 6. the size cap holds before the bytes are held
class CountingStorage(LocalStorage):
    reads: list = []

    def read(self, key):
        self.reads.append(key)
        return super().read(key)

    def read_range(self, key, offset, length):
        self.reads.append(key)
        return super().read_range(key, offset, length)


def test_oversized_inputs_are_refused_before_reading(tmp_path, s3, bucket):
    big = os.urandom(MAX_BYTES + 1)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "huge.jpg").write_bytes(big)
    with zipfile.ZipFile(folder / "z.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("stored.jpg", big)
    storage = CountingStorage(str(folder))
    items, _ = scan_inputs(storage)
    storage.reads.clear()
    for item in items:
        with pytest.raises(ValueError, match=f"over the {MAX_BYTES}-byte limit"):
            read_input(storage, item)
    assert storage.reads == []  # neither the file nor the member was read
    s3.put_object(Bucket=bucket, Key="p/huge.jpg", Body=big)
    items, _, s3 = scan_uri(f"s3://{bucket}/p")
    assert items[0].size == MAX_BYTES + 1
    with pytest.raises(ValueError, match="over the"):
        read_input(s3, items[0])


# 8. the reference set is images, not a submission; an S3 workdir gets its demo data on S3
def test_reference_paintings_in_a_zip_are_not_checked_as_a_submission(ray_cluster, demo_data, tmp_path):
    with zipfile.ZipFile(tmp_path / "monet.zip", "w") as zf:
        for p in sorted((demo_data / "monet_jpg").glob("*.jpg")):
            zf.writestr(p.name, p.read_bytes())
        zf.writestr("odd-size.jpg", image_bytes(size=(300, 200)))  # a reference image need not be 256x256
    report = evaluate(str(demo_data / "photo_jpg"), str(tmp_path / "monet.zip"), None,
                      EvalOptions(features="pixels", progress=False), report_uri=str(tmp_path / "r.json"))
    assert report["counts"]["real"] == 13


def test_pipeline_with_an_s3_workdir_and_no_data_keeps_everything_on_s3(ray_cluster, s3, bucket, tmp_path,
                                                                        monkeypatch):
    from jobs import pipeline
    monkeypatch.chdir(tmp_path)
    assert pipeline.main(["--workdir", f"s3://{bucket}/w", "--photos", "12", "--paintings", "6", "--epochs", "1",
                          "--image-size", "32", "--ngf", "8", "--n-blocks", "1", "--features", "pixels"]) == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sum(k.startswith("w/data/photo_jpg/") for k in keys) == 12
    assert {"w/images.zip", "w/generator.pt", "w/images.zip.evaluation.json"} <= keys
    assert list(tmp_path.iterdir()) == []  # nothing written to a local folder named "s3:"


# 9. temp files of a killed run are removed by the next run of the job
def test_stale_temp_files_are_removed_by_the_next_run(ray_cluster, tmp_path):
    ckpt = _ckpt(tmp_path / "d.pt", "dcgan", 0)
    out = tmp_path / "out"
    generate(3, 0, opts(ckpt, out))
    stale = out / ".tmp-killed-mid-write"
    stale.write_bytes(b"half a jpeg")
    old = time.time() - 60
    os.utime(stale, (old, old))
    generate(3, 0, opts(ckpt, out))
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == ["00000.jpg", "00001.jpg", "00002.jpg", MANIFEST, REPORT]


def test_the_manifest_records_what_makes_the_job(ray_cluster, tmp_path):
    ckpt = _ckpt(tmp_path / "d.pt", "dcgan", 0)
    generate(2, 4, opts(ckpt, tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["settings"]["seed"] == 4 and manifest["settings"]["count"] == 2
    assert len(manifest["settings"]["checkpoint_sha256"]) == 64
    assert manifest["settings"]["image_policy"]["size"] == 256
    assert sorted(manifest["outputs"]) == ["00000.jpg", "00001.jpg"]
