"""Batch jobs on the shared local Ray: stylize and generate, local and S3, bad inputs, crashes, the zip."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from gan.batch.engine import MANIFEST, REPORT, BatchOptions, GeneratorActor, summary_line
from gan.checkpoint import CheckpointError, generator_checkpoint, to_bytes
from gan.models.dcgan import DCGANConfig, DCGANGenerator
from gan.train.demo_data import write_demo_data
from gan.batch.generate import generate
from gan.io.images import decode_image, encode_jpeg
from gan.io.naming import output_names, safe_stem
from gan.io.storage import LocalStorage, StorageError, open_storage
from gan.batch.stylize import photos_of, stylize
from gan.batch.submission import SubmissionError, assemble, check_submission_image, check_zip, checked_images
from tests import processes
from tests.conftest import ROOT
from tests.helpers import BROKEN, GOOD_ODD, image_bytes, write_files


@pytest.fixture(scope="module")
def dcgan_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = DCGANConfig(image_size=64, ngf=8)
    g = DCGANGenerator(cfg)
    for m in g.modules():  # larger weights than the N(0, 0.02) init, so images depend visibly on the noise
        if isinstance(m, torch.nn.ConvTranspose2d):
            m.weight.data.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("ckpt") / "d.pt"
    path.write_bytes(to_bytes(generator_checkpoint("dcgan", cfg, g)))
    return str(path)


PHOTOS = 120  # 30 batches of 4 for the killed driver, which dies at its 10th


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("photos")
    write_demo_data(out, photos=PHOTOS, paintings=0, seed=7)
    return out / "photo_jpg"


def opts(ckpt, out, **kw) -> BatchOptions:
    return BatchOptions(checkpoint=ckpt, output=open_storage(str(out)), batch_size=kw.pop("batch_size", 8),
                        progress=False, **kw)


def test_a_local_key_never_leaves_the_storage_root(tmp_path):
    storage = open_storage(str(tmp_path / "root"))
    storage.write("a/b.jpg", b"x")
    assert storage.read("a/b.jpg") == b"x" and storage.child("a/b.jpg") == str(tmp_path / "root" / "a" / "b.jpg")
    for key in ("../outside.jpg", "a/../../outside.jpg", "/etc/passwd"):
        with pytest.raises(StorageError, match="leaves the storage root"):
            storage.write(key, b"x")
        with pytest.raises(StorageError, match="leaves the storage root"):
            storage.read(key)
    assert not (tmp_path / "outside.jpg").exists()


def test_safe_output_names():
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("..\\..\\evil name!.jpg") == "evil_name"
    assert safe_stem("a/b/.hidden.png") == "hidden"
    assert safe_stem("....") .startswith("image-")
    names = output_names(["a/x.jpg", "b/x.jpg", "x.png", "y.jpg"])
    assert names["y.jpg"] == "y.jpg"
    assert len({names["a/x.jpg"], names["b/x.jpg"], names["x.png"]}) == 3
    assert all(n.startswith("x-") for k, n in names.items() if k != "y.jpg")
    assert output_names(["b/x.jpg", "a/x.jpg", "x.png", "y.jpg"]) == names  # order-independent


def test_stylize_local_with_bad_and_odd_inputs_then_rerun_does_nothing(ray_cluster, tmp_path, cyclegan_ckpt):
    src = tmp_path / "in"
    write_files(src, {f"ok{i}.jpg": (lambda i=i: image_bytes(seed=i)) for i in range(5)})
    write_files(src, GOOD_ODD)
    write_files(src, BROKEN)
    write_files(src / "sub", {"ok0.jpg": image_bytes, "..weird name?.jpg": image_bytes})
    out = tmp_path / "out"
    result = stylize(str(src), opts(cyclegan_ckpt, out))
    report = json.loads((out / REPORT).read_text())
    valid = 5 + len(GOOD_ODD) + 2
    assert report["counts"] == {"inputs": valid + len(BROKEN), "outputs": valid, "written": valid,
                                "skipped_existing": 0, "rejected": len(BROKEN)}
    assert sorted(r["name"] for r in report["rejected"]) == sorted(BROKEN)
    assert all(r["reason"].startswith(r["name"] + ": ") for r in report["rejected"])
    jpgs = sorted(p.name for p in out.glob("*.jpg"))
    assert len(jpgs) == valid and "weird_name.jpg" in jpgs
    assert sum(n.startswith("ok0-") for n in jpgs) == 2  # the duplicate name in two folders: both kept
    for p in out.glob("*.jpg"):
        assert decode_image(p.read_bytes(), p.name).shape == (256, 256, 3)
    assert "stylize: 15 images" in summary_line(result)
    # a finished job rerun does no work and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = stylize(str(src), opts(cyclegan_ckpt, out))
    assert again.skipped_run and "already complete" in summary_line(again)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_stylize_s3_to_s3_and_tfrecords(ray_cluster, s3, bucket, demo_data, cyclegan_ckpt, tmp_path):
    for p in sorted((demo_data / "photo_jpg").glob("*.jpg"))[:10]:
        s3.put_object(Bucket=bucket, Key=f"photos/{p.name}", Body=p.read_bytes())
    s3.upload_file(cyclegan_ckpt, bucket, "models/g.pt")
    result = stylize(f"s3://{bucket}/photos", opts(f"s3://{bucket}/models/g.pt", f"s3://{bucket}/out"))
    assert result.report["counts"]["written"] == 10
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert len([k for k in keys if k.endswith(".jpg")]) == 10 and f"out/{REPORT}" in keys and f"out/{MANIFEST}" in keys
    # TFRecords in, local out: names come from the records' image_name
    tf_out = tmp_path / "tf"
    result = stylize(str(demo_data / "photo_tfrec"), opts(cyclegan_ckpt, tf_out))
    assert result.report["counts"]["written"] == 24
    assert sorted(p.stem for p in tf_out.glob("*.jpg")) == sorted(p.stem for p in (demo_data / "photo_jpg").glob("*.jpg"))
    # a prefix that does not exist
    with pytest.raises(StorageError, match=f"s3://{bucket}/nothing-here: no files found"):
        stylize(f"s3://{bucket}/nothing-here", opts(cyclegan_ckpt, tmp_path / "x"))


def test_wrong_checkpoint_kind_is_refused(ray_cluster, demo_data, dcgan_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="this is a dcgan generator, which takes seeds; stylize needs a generator "
                                              "that takes photos"):
        stylize(str(demo_data / "photo_jpg"), opts(dcgan_ckpt, tmp_path / "o"))


def test_a_killed_actor_is_replaced_and_nothing_is_lost(ray_cluster, photos, cyclegan_ckpt, tmp_path):
    marker = str(tmp_path / "crashed")

    class CrashOnce(GeneratorActor):  # passed in from outside: production code has no fault hook
        def __call__(self, batch: dict) -> dict:
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # a lost actor / node: Ray Data must replace it and retry the batch
            return super().__call__(batch)

    out = tmp_path / "out"
    result = stylize(str(photos), opts(cyclegan_ckpt, out, actor_cls=CrashOnce))
    assert os.path.exists(marker)  # the actor did die once
    assert result.report["counts"]["outputs"] == PHOTOS and len(list(out.glob("*.jpg"))) == PHOTOS


def _zip_contents(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        return {n: decode_image(zf.read(n), n) for n in zf.namelist()}


KILL_DRIVER = """
import os, signal, sys
from gan.batch.engine import BatchOptions, GeneratorActor
from gan.batch.stylize import photos_of, stylize
from gan.io.storage import open_storage

class KillDriverAtBatch10(GeneratorActor):
    calls = 0

    def __call__(self, batch):
        KillDriverAtBatch10.calls += 1
        if KillDriverAtBatch10.calls == 10:  # a known point: 9 of 30 batches through the model, 21 not
            os.killpg(int(os.environ["DRIVER_PGID"]), signal.SIGKILL)  # the driver, its GCS and raylet
        return super().__call__(batch)

if __name__ == "__main__":
    os.environ["DRIVER_PGID"] = str(os.getpgid(0))
    ckpt, photos, out = sys.argv[1:4]
    stylize(photos, BatchOptions(checkpoint=ckpt, output=open_storage(out), batch_size=4, progress=False,
                                 actor_cls=KillDriverAtBatch10))
"""


def test_driver_killed_mid_job_then_rerun_gives_exactly_one_output_each(ray_cluster, photos, cyclegan_ckpt, tmp_path):
    # the uninterrupted run, for comparison
    clean = tmp_path / "clean"
    stylize(str(photos), opts(cyclegan_ckpt, clean))
    assemble(open_storage(str(clean)), str(tmp_path / "clean.zip"), min_images=PHOTOS, max_images=PHOTOS)

    out = tmp_path / "out"
    (tmp_path / "kill_driver.py").write_text(KILL_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    env[processes.TAG] = tag = processes.new_tag()
    proc = subprocess.run([sys.executable, str(tmp_path / "kill_driver.py"), cyclegan_ckpt, str(photos), str(out)],
                          cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    processes.kill_tagged(tag)  # the driver's Ray workers too (groups of their own): the whole node is gone
    partial = len(list(out.glob("*.jpg")))
    assert partial < PHOTOS and (out / MANIFEST).exists() and not (out / REPORT).exists()
    result = stylize(str(photos), opts(cyclegan_ckpt, out))
    c = result.report["counts"]
    assert c["skipped_existing"] == partial and c["written"] == PHOTOS - partial and c["outputs"] == PHOTOS
    assert len(list(out.glob("*.jpg"))) == PHOTOS and not list(out.glob(".tmp-*"))  # the rerun removed stale temps
    assemble(open_storage(str(out)), str(tmp_path / "resumed.zip"), min_images=PHOTOS, max_images=PHOTOS)
    a, b = _zip_contents(tmp_path / "clean.zip"), _zip_contents(tmp_path / "resumed.zip")
    assert sorted(a) == sorted(b)
    # same model on each image: equal up to float rounding of a different batch/thread split, seen through JPEG
    assert max(np.abs(a[n].astype(int) - b[n].astype(int)).mean() for n in a) < 0.5


def test_generate_is_deterministic_across_actor_counts(ray_cluster, dcgan_ckpt, tmp_path):
    one = generate(12, seed=5, opts=opts(dcgan_ckpt, tmp_path / "one", actors=1, batch_size=5))
    two = generate(12, seed=5, opts=opts(dcgan_ckpt, tmp_path / "two", actors=2, batch_size=3))
    assert one.report["counts"]["outputs"] == two.report["counts"]["outputs"] == 12
    names = sorted(p.name for p in (tmp_path / "one").glob("*.jpg"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.jpg")) and names[0] == "00000.jpg"
    for n in names:
        a = decode_image((tmp_path / "one" / n).read_bytes(), n)
        b = decode_image((tmp_path / "two" / n).read_bytes(), n)
        assert a.shape == (256, 256, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 2
    other = generate(3, seed=6, opts=opts(dcgan_ckpt, tmp_path / "other", actors=1))
    c = decode_image((tmp_path / "other" / "00000.jpg").read_bytes(), "c")
    a = decode_image((tmp_path / "one" / "00000.jpg").read_bytes(), "a")
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10  # another seed, other images
    assert other.report["counts"]["outputs"] == 3


def test_zip_checks(tmp_path, s3, bucket, monkeypatch):
    folder = tmp_path / "imgs"
    write_files(folder, {f"{i}.jpg": (lambda i=i: image_bytes(seed=i)) for i in range(6)})
    (folder / REPORT).write_text("{}")
    with pytest.raises(SubmissionError, match="6 images, a submission needs 7000 to 10000"):
        assemble(open_storage(str(folder)), str(tmp_path / "images.zip"))
    assert not (tmp_path / "images.zip").exists()
    info = assemble(open_storage(str(folder)), f"s3://{bucket}/sub/images.zip", min_images=1)
    assert info["images"] == 6
    data = s3.get_object(Bucket=bucket, Key="sub/images.zip")["Body"].read()
    assert check_zip(data, "images.zip", min_images=6, max_images=6) == 6
    with monkeypatch.context() as later:  # the same images an hour later: the same bytes (no clock in the entries)
        now = time.time()
        later.setattr(time, "time", lambda: now + 3600)
        assemble(open_storage(str(folder)), str(tmp_path / "later.zip"), min_images=1)
    assert (tmp_path / "later.zip").read_bytes() == data
    assert {i.filename: i.external_attr >> 16 for i in zipfile.ZipFile(tmp_path / "later.zip").infolist()} == {
        f"{i}.jpg": 0o644 for i in range(6)}
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("small.jpg", image_bytes(size=(64, 64)))
    with pytest.raises(SubmissionError, match="small.jpg: is 64x64"):
        check_zip(str(tmp_path / "bad.zip"), "bad.zip", min_images=1)
    with pytest.raises(SubmissionError, match="not a zip"):
        check_zip(b"hello", "x.zip")
    # the check decodes each JPEG's whole stream (at 1/8 scale): a cut or damaged body is found, not only its header
    whole = image_bytes(seed=9)
    damaged = whole[:600] + bytes(b ^ 0x5A for b in whole[600:1400]) + whole[1400:]
    for name, data, why in (("cut.jpg", whole[:len(whole) // 2], "truncated"), ("gray.jpg", image_bytes("L"), "mode L"),
                            ("damaged.jpg", damaged, "corrupt|truncated|broken")):
        with pytest.raises(SubmissionError, match=f"{name}: .*({why})"):
            check_submission_image(data, name)
    check_submission_image(whole, "whole.jpg")
    (folder / "7.jpg").write_bytes(image_bytes(fmt="PNG"))
    with pytest.raises(SubmissionError, match="7.jpg: is PNG"):
        assemble(open_storage(str(folder)), str(tmp_path / "images.zip"), min_images=1)
    assert not list(tmp_path.glob("*.zip")) or not (tmp_path / "images.zip").exists()
    # read ahead in threads (as from S3), still in order: of two bad images the error names the first one
    (folder / "2.jpg").write_bytes(image_bytes(size=(64, 64)))
    keys = [f"{i}.jpg" for i in (0, 1, 2, 3, 4, 5, 7)]
    with pytest.raises(SubmissionError, match="2.jpg: is 64x64"):
        list(checked_images(open_storage(str(folder)), keys, ahead=4))
    good = [k for k in keys if k not in ("2.jpg", "7.jpg")]
    assert [(k, d) for k, d in checked_images(open_storage(str(folder)), good, ahead=3)] == [
        (k, (folder / k).read_bytes()) for k in good]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_large_zip_is_checked_in_processes_in_order(where, tmp_path, monkeypatch, request):
    """A large folder, local or on S3, is read and checked in processes, chunk by chunk (from S3 with GETs in flight
    in each), the storage sent once to each process: the same entries, in order, the same zip bytes as the serial
    check; the first bad image (or a missing one) is raised at its key, after the good ones before it."""
    from gan.batch import submission
    if where == "s3":
        s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("bucket")
        storage = open_storage(f"s3://{bucket}/styled")
        put = lambda key, data: s3.put_object(Bucket=bucket, Key=f"styled/{key}", Body=data)  # noqa: E731
    else:
        folder = tmp_path / "styled"
        folder.mkdir()
        storage = open_storage(str(folder))
        put = lambda key, data: (folder / key).write_bytes(data)  # noqa: E731
    keys = [f"{i:02d}.jpg" for i in range(9)]
    written = {key: image_bytes(seed=i) for i, key in enumerate(keys)}
    for key, data in written.items():
        put(key, data)
    monkeypatch.setattr(submission, "PROCESS_CHUNK", 2)  # chunk boundaries inside this small folder
    sent, getstate = [], type(storage).__getstate__
    monkeypatch.setattr(type(storage), "__getstate__", lambda self: sent.append(self) or getstate(self))
    assert list(checked_images(storage, keys, processes=2)) == [(k, written[k]) for k in keys]
    assert len(sent) == 2  # once to each process (one S3 client each), not with each of the 5 chunks
    assemble(storage, str(tmp_path / "serial.zip"), min_images=1)
    monkeypatch.setattr(submission, "PROCESSES_FROM", 1)
    in_processes = []
    checked = submission._checked_in_processes
    monkeypatch.setattr(submission, "_checked_in_processes", lambda *a: in_processes.append(a[2]) or checked(*a))
    assemble(storage, str(tmp_path / "processes.zip"), min_images=1)
    assert in_processes == [submission.checking_processes()]  # both storages read a large folder in processes
    assert (tmp_path / "processes.zip").read_bytes() == (tmp_path / "serial.zip").read_bytes()
    put("05.jpg", image_bytes(size=(64, 64)))
    put("07.jpg", b"not a jpeg")
    seen = []
    with pytest.raises(SubmissionError, match="05.jpg: is 64x64"):
        seen.extend(k for k, _ in checked_images(storage, keys, processes=2))
    assert seen == keys[:5]
    with pytest.raises(StorageError, match="missing.jpg: no such"):
        list(checked_images(storage, keys[:3] + ["missing.jpg"], processes=2))


def test_generate_and_assemble_command_lines(ray_cluster, dcgan_ckpt, tmp_path, capsys, monkeypatch):
    from jobs.cli import run_main
    from jobs import assemble as assemble_job
    from jobs import generate as generate_job
    out = tmp_path / "gen"
    listed, walk = [], LocalStorage._walk  # what every listing of a folder goes through
    monkeypatch.setattr(LocalStorage, "_walk", lambda self, prefix: listed.append(self.root) or walk(self, prefix))
    command = ["--checkpoint", dcgan_ckpt, "--count", "5", "--output", str(out), "--no-progress",
               "--zip", str(tmp_path / "images.zip"), "--min-images", "5"]
    assert generate_job.main(command) == 0
    printed = capsys.readouterr().out
    assert "generate: 5 images (5 new, 0 already done)" in printed and "zip: 5 images" in printed
    assert check_zip(str(tmp_path / "images.zip"), "images.zip", min_images=5, max_images=5) == 5
    # the folder is listed once, by the job's check of what is done: its zip, right after, does not list it again
    assert listed == [str(out)]
    # the same command again: the job is complete and its zip untouched since, so neither is made again
    made = (tmp_path / "images.zip").stat().st_mtime_ns
    reads, read = [], LocalStorage.read
    monkeypatch.setattr(LocalStorage, "read", lambda self, key: reads.append(key) or read(self, key))
    assert generate_job.main(command) == 0
    printed = capsys.readouterr().out
    assert "already complete" in printed and "zip: already made of these outputs, untouched since (5 images)" in printed
    assert (tmp_path / "images.zip").stat().st_mtime_ns == made and not [k for k in reads if k.endswith(".jpg")]
    (tmp_path / "images.zip").write_bytes(b"changed by hand")  # a zip changed since is made again
    assert generate_job.main(command) == 0
    assert "zip: 5 images" in capsys.readouterr().out
    assert check_zip(str(tmp_path / "images.zip"), "images.zip", min_images=5, max_images=5) == 5
    # a zip made on its own lists the folder first: an output missing is named, the job to be rerun, no zip made
    first = sorted(out.glob("*.jpg"))[0]
    data = first.read_bytes()
    first.unlink()
    assert run_main(assemble_job.main, ["--input", str(out), "--output", str(tmp_path / "part.zip"),
                                        "--min-images", "1"]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "pid=" not in ln]
    assert len(err) == 1 and f"1 outputs of its job are missing ({first.name}): rerun the job" in err[0]
    assert not (tmp_path / "part.zip").exists()
    with pytest.raises(StorageError, match=f"{first.name}: no such file"):  # told it was whole: found at its read
        assemble(open_storage(str(out)), str(tmp_path / "part.zip"), min_images=1, outputs_checked=True)
    assert not (tmp_path / "part.zip").exists()
    first.write_bytes(data)
    assert run_main(assemble_job.main, ["--input", str(out), "--output", str(tmp_path / "strict.zip")]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "pid=" not in ln]  # less Ray's forwarded logs
    assert len(err) == 1 and "5 images, a submission needs 7000 to 10000" in err[0]
    assert not (tmp_path / "strict.zip").exists()
    # a zip the plan can never fill fails before any work: no output, no manifest, one line
    few = tmp_path / "few"
    assert run_main(generate_job.main, ["--checkpoint", dcgan_ckpt, "--count", "5", "--output", str(few),
                                        "--no-progress", "--zip", str(tmp_path / "few.zip")]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "pid=" not in ln]
    assert len(err) == 1 and "generate: 5 outputs planned, fewer than the 7000 images the zip needs" in err[0]
    assert not few.exists() or list(few.iterdir()) == []


def _zipped(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_a_local_job_zips_each_output_as_it_writes_it_reading_each_once(
        ray_cluster, dcgan_ckpt, tmp_path, capsys, monkeypatch):
    """--zip to a local folder: the driver reads each output once, as its row comes back from the write task (a file
    read; no image bytes through Ray's object store), and zips it when it is the bytes that task checked (their
    CRC-32), else the job fails with one line and no zip appears. A resumed job reads each output once too (the
    earlier run's, checked whole). The zip holds exactly the outputs, byte for byte, and one whose count is out of
    range never appears."""
    from jobs.cli import run_main
    from jobs import generate as generate_job
    out, target = tmp_path / "gen", tmp_path / "images.zip"
    reads, read = [], LocalStorage.read  # the driver's reads (the write tasks run in Ray's workers)
    monkeypatch.setattr(LocalStorage, "read", lambda self, key: reads.append(key) or read(self, key))
    command = ["--checkpoint", dcgan_ckpt, "--count", "6", "--output", str(out), "--no-progress",
               "--min-images", "6", "--max-images", "6"]
    assert generate_job.main(command + ["--zip", str(target)]) == 0
    assert "zip: 6 images" in capsys.readouterr().out
    outputs = {p.name: p.read_bytes() for p in out.glob("*.jpg")}
    assert len(outputs) == 6 and _zipped(target) == outputs
    assert sorted(k for k in reads if k.endswith(".jpg")) == sorted(outputs)
    # an interrupted run: two outputs missing. The rerun makes those two and reads each of the six once
    gone = sorted(outputs)[1:3]
    for name in gone:
        (out / name).unlink()
    reads.clear()
    assert generate_job.main(command + ["--zip", str(target)]) == 0
    assert "generate: 6 images (2 new, 4 already done)" in capsys.readouterr().out
    assert sorted(k for k in reads if k.endswith(".jpg")) == sorted(outputs)
    now = {p.name: p.read_bytes() for p in out.glob("*.jpg")}
    assert _zipped(target) == now and sorted(now) == sorted(outputs)
    assert all(now[name] == data for name, data in outputs.items() if name not in gone)
    made = json.loads((out / REPORT).read_text())["zip"]
    assert made["images"] == 6 and made["bytes"] == sum(map(len, now.values())) and made["zip"] == str(target)
    # an output that is not what its write task wrote by the time the driver reads it: one line, no zip
    (out / gone[0]).unlink()
    monkeypatch.setattr(LocalStorage, "read", lambda self, key: read(self, key)[:-1] + b"\x00" if key == gone[0]
                        else read(self, key))
    assert run_main(generate_job.main, command + ["--zip", str(tmp_path / "changed.zip")]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "pid=" not in ln]
    assert len(err) == 1 and f"{out / gone[0]}: changed after the job wrote it" in err[0], err
    assert not (tmp_path / "changed.zip").exists()
    monkeypatch.setattr(LocalStorage, "read", read)
    # a count the range refuses, found once the job has run: the job's outputs and report stay, no zip appears
    (out / gone[0]).unlink()
    assert run_main(generate_job.main, command[:-4] + ["--min-images", "1", "--max-images", "5",
                                                       "--zip", str(tmp_path / "few.zip")]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "pid=" not in ln]
    assert len(err) == 1 and "6 images, a submission needs 1 to 5" in err[0]
    assert (out / gone[0]).is_file() and (out / REPORT).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen", "images.zip"]  # no other zip, no temporary file


def test_an_s3_job_zips_the_bytes_its_write_tasks_send_and_reads_back_only_an_earlier_runs(
        ray_cluster, dcgan_ckpt, s3, bucket, tmp_path, capsys, monkeypatch):
    """--zip with outputs on S3: each output's bytes come back with its row from the write task (a GET each would
    cost the driver more), so the driver GETs no output of this run; a resumed job GETs back only what its earlier
    run wrote. The zip holds exactly the outputs, byte for byte."""
    from gan.io.storage import S3Storage
    from jobs import generate as generate_job
    target = tmp_path / "images.zip"
    reads, read = [], S3Storage.read
    monkeypatch.setattr(S3Storage, "read", lambda self, key: reads.append(key) or read(self, key))
    command = ["--checkpoint", dcgan_ckpt, "--count", "6", "--output", f"s3://{bucket}/gen", "--no-progress",
               "--min-images", "6", "--max-images", "6", "--zip", str(target)]

    def outputs() -> dict:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="gen/")["Contents"]]
        return {k[4:]: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys if k.endswith(".jpg")}

    assert generate_job.main(command) == 0
    assert "zip: 6 images" in capsys.readouterr().out
    first = outputs()
    assert len(first) == 6 and _zipped(target) == first
    assert not [k for k in reads if k.endswith(".jpg")]
    gone = sorted(first)[1:3]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"gen/{name}"} for name in gone]})
    assert generate_job.main(command) == 0
    assert "generate: 6 images (2 new, 4 already done)" in capsys.readouterr().out
    assert sorted(k for k in reads if k.endswith(".jpg")) == sorted(set(first) - set(gone))
    assert _zipped(target) == outputs()


def test_the_write_stage_passes_checked_outputs_on_and_rejects_one_that_fails(tmp_path):
    """With a zip made as the job runs, the write task checks each output and sends its bytes on to the driver, or
    only their CRC-32 when the driver reads the storage itself; an output that fails the check is its row's error
    and is not written. Without a zip, nothing is sent on."""
    from gan.batch.pipeline import Row, WriteStage
    from gan.batch.submission import JobZip
    for bad, says in ((image_bytes(fmt="PNG"), "is PNG"), (image_bytes(mode="L"), "has mode L"),
                      (b"\xff\xd8 not a jpeg", "not an image")):  # what the write task checks: the header alone
        with pytest.raises(SubmissionError, match=says):
            JobZip.check(bad, "x.jpg")
    storage = LocalStorage(str(tmp_path))
    rows = np.empty(3, dtype=object)
    rows[:] = [Row(f"p{i}", i, out=f"o{i}.jpg") for i in range(3)]
    jpegs = np.empty(3, dtype=object)
    jpegs[:] = [image_bytes(seed=1), image_bytes(size=(64, 64)), b""]
    batch = {"row": rows, "jpeg": jpegs, "error": np.array(["", "", "p2: broken"], dtype=object)}
    sent = WriteStage(storage, pass_on=JobZip.check)(batch)
    assert list(sent["error"]) == ["", "o1.jpg: is 64x64, the submission needs 256x256", "p2: broken"]
    assert os.listdir(tmp_path) == ["o0.jpg"] and (tmp_path / "o0.jpg").read_bytes() == jpegs[0]
    assert list(sent["jpeg"]) == [jpegs[0], b"", b""] and "crc" not in sent
    kept = WriteStage(LocalStorage(str(tmp_path / "kept")), pass_on=JobZip.check, send_bytes=False)(batch)
    assert "jpeg" not in kept and list(kept["crc"]) == [zlib.crc32(jpegs[0]), 0, 0]
    assert list(kept["error"]) == list(sent["error"])
    assert os.listdir(tmp_path / "kept") == ["o0.jpg"]
    plain = WriteStage(LocalStorage(str(tmp_path / "plain")))(batch)
    assert "jpeg" not in plain and list(plain["error"]) == list(batch["error"])
    assert sorted(os.listdir(tmp_path / "plain")) == ["o0.jpg", "o1.jpg"]


def test_a_pipeline_that_sends_outputs_bytes_to_the_driver_holds_a_bounded_share_of_the_object_store(tmp_path):
    """Bytes sent on to the driver (S3 with a zip) land in store pages the driver maps: the pipeline's share of the
    store is capped, per actor and by batch size, so that those pages stay few; other pipelines keep Ray Data's."""
    from gan.batch.pipeline import IMAGE_BYTES, STORE_PER_ACTOR, ActorPlan, WriteStage, store_budget
    from gan.batch.submission import JobZip
    storage = LocalStorage(str(tmp_path))
    plan = ActorPlan(actors=3, cpus=1.0, gpus=1.0, threads=None)
    sends = WriteStage(storage, pass_on=JobZip.check, send_bytes=True)
    assert store_budget(plan, 64, sends) == 3 * STORE_PER_ACTOR
    assert store_budget(plan, 512, sends) == 3 * 4 * 512 * IMAGE_BYTES > 3 * STORE_PER_ACTOR
    assert store_budget(plan, 64, WriteStage(storage, pass_on=JobZip.check, send_bytes=False)) is None
    assert store_budget(plan, 64, WriteStage(storage)) is None
    assert store_budget(plan, 64, None) is None


def test_stylize_reads_a_zip_of_photos(ray_cluster, demo_data, cyclegan_ckpt, tmp_path):
    photos = sorted((demo_data / "photo_jpg").glob("*.jpg"))[:6]
    with zipfile.ZipFile(tmp_path / "photos.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in photos:
            zf.writestr(f"batch1/{p.name}", p.read_bytes())
    result = stylize(str(tmp_path / "photos.zip"), opts(cyclegan_ckpt, tmp_path / "out"))
    assert result.report["counts"]["written"] == 6
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == sorted(p.name for p in photos)


def test_pixels_reach_the_model_as_uint8_and_are_normalised_there():
    """What the actors feed the generator: the same values as `to_tensor`, in channels_last, on every device
    present (on CUDA the uint8 bytes are copied from pinned memory and normalised on the GPU)."""
    from gan.io.images import from_uint8, to_tensor
    from gan.models.inference import Photos
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        x = from_uint8(Photos.from_numpy(pixels, device).pixels)
        assert x.shape == (3, 3, 32, 32) and x.device.type == device.type
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x.cpu(), to_tensor(pixels))


def test_a_compiled_generator_gives_the_eager_images_and_compiles_once(ray_cluster, cyclegan_ckpt):
    """--compile: the actor compiles its generator at start (warm-up at the batch's shape) and pads a short last
    batch, so a 4-image and a 3-image batch run one compiled graph; the images equal the eager actor's within
    one grey level (float rounding differs)."""
    from torch._dynamo.utils import counters
    pixels = np.random.default_rng(1).integers(0, 256, (7, 256, 256, 3), dtype=np.uint8)

    def run(actor: GeneratorActor) -> np.ndarray:
        out = [actor({"row": np.array([None] * len(p), dtype=object), "pixels": p,
                      "error": np.array([""] * len(p), dtype=object)})["pixels"] for p in (pixels[:4], pixels[4:])]
        return np.concatenate(out)

    eager = run(GeneratorActor(cyclegan_ckpt, photos_of, threads=2))
    counters.clear()
    compiled_actor = GeneratorActor(cyclegan_ckpt, photos_of, threads=2, compile=True, batch_size=4)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # compiled in the constructor
    compiled = run(compiled_actor)
    assert counters["stats"]["unique_graphs"] == graphs  # no compile for either batch, the short one included
    assert compiled.shape == eager.shape == (7, 256, 256, 3)
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1


def _progressive_jpeg() -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(decode_image(image_bytes(seed=3), "x")).save(buf, "JPEG", quality=90, progressive=True)
    return buf.getvalue()


def test_jpegs_decoded_on_the_device_match_pillow_and_the_rest_take_the_pillow_path():
    """--device-jpeg's decoder: a whole baseline RGB JPEG of the model's size is decoded by torchvision (nvJPEG on
    CUDA, libjpeg-turbo here) to Pillow's pixels within JPEG tolerance; every other input (odd modes, sizes,
    progressive, truncated, not an image, a bomb) goes through Pillow and gets its pixels or its reject reason."""
    from gan.batch.device_jpeg import decode_to_device, encode_on_device, fits_device_decode
    from gan.io.images import BadImageError
    plain = {f"p{i}.jpg": image_bytes(seed=i) for i in range(3)}
    others = {**{k: make() for k, make in GOOD_ODD.items()}, "progressive.jpg": _progressive_jpeg(),
              **{k: make() for k, make in BROKEN.items()}}
    assert all(fits_device_decode(d, 256) for d in plain.values())
    assert not any(fits_device_decode(d, 256) for d in others.values())
    names = [*plain, *others]
    datas = [*plain.values(), *others.values()]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        images, errors = decode_to_device(datas, names, 256, device)
        assert images.shape == (len(datas), 3, 256, 256) and images.dtype == torch.uint8
        assert images.device.type == device.type
        for name, data, image, error in zip(names, datas, images.cpu(), errors):
            try:
                want = decode_image(data, name)
            except BadImageError as e:
                assert error == str(e), name  # the Pillow path's reason, word for word
                continue
            assert not error, name
            got = image.permute(1, 2, 0).numpy().astype(int)
            diff = np.abs(got - want.astype(int))
            if name in plain:  # decoders may round the IDCT and chroma upsampling differently
                assert diff.max() <= 8 and diff.mean() < 1.0, (name, diff.max(), diff.mean())
            else:              # Pillow decoded it: the same pixels exactly
                assert diff.max() == 0, name
        encoded = encode_on_device(images[:3])  # quality 95, as the Pillow path's encode_jpeg
        pixels = images[:3].permute(0, 2, 3, 1).cpu().numpy()
        back, ref = (np.stack([decode_image(e, "out.jpg").astype(int) for e in jpegs])
                     for jpegs in (encoded, [encode_jpeg(p) for p in pixels]))
        assert np.abs(back - ref).mean() < 1.0 and np.abs(back - pixels).mean() < np.abs(pixels - 128).mean() / 4


def test_stylize_with_jpegs_on_the_device_gives_the_same_outputs_and_rejects(ray_cluster, tmp_path, cyclegan_ckpt):
    """--device-jpeg: tasks read bytes only, the actor decodes, stylizes and encodes; same outputs (within JPEG
    tolerance), same names, same rejects with the same reasons as the Pillow path; a rerun does nothing."""
    src = tmp_path / "in"
    write_files(src, {f"ok{i}.jpg": (lambda i=i: image_bytes(seed=i)) for i in range(5)})
    write_files(src, GOOD_ODD)
    write_files(src, BROKEN)
    write_files(src, {"progressive.jpg": _progressive_jpeg})
    pillow = stylize(str(src), opts(cyclegan_ckpt, tmp_path / "pillow"))
    device = stylize(str(src), opts(cyclegan_ckpt, tmp_path / "device", device_jpeg=True))
    assert device.report["counts"] == pillow.report["counts"]
    assert device.report["rejected"] == pillow.report["rejected"] and len(device.report["rejected"]) == len(BROKEN)
    made = sorted(p.name for p in (tmp_path / "device").glob("*.jpg"))
    assert made == sorted(p.name for p in (tmp_path / "pillow").glob("*.jpg")) and len(made) == 5 + len(GOOD_ODD) + 1
    for name in made:
        a, b = (decode_image((tmp_path / d / name).read_bytes(), name).astype(int) for d in ("pillow", "device"))
        assert np.abs(a - b).mean() < 2.0, name
    assert stylize(str(src), opts(cyclegan_ckpt, tmp_path / "device", device_jpeg=True)).skipped_run
