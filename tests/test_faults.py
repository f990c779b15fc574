"""Faults a production user meets: S3 going away mid-job, a full disk, a damaged checkpoint, a stop signal. Each
ends with the work going on, or one line naming the cause; a rerun then completes the job exactly once. Every
fault is triggered at a known point (after K outputs, at a given batch), not by a sleep that races the job."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gan.batch.engine import MANIFEST, REPORT, BatchOptions, GeneratorActor
from gan.batch.stylize import stylize
from gan.batch.submission import assemble
from gan.io.images import decode_image
from gan.io.storage import LocalStorage, StorageFullError, StorageUnavailableError, open_storage
from gan.train.demo_data import write_demo_data
from gan.train.run_checkpoint import STATE_FILE
from jobs.cli import run_main
from tests.outage import OutageProxy


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("photos")
    write_demo_data(out, photos=40, paintings=0, seed=3)
    return out / "photo_jpg"


class SlowActor(GeneratorActor):
    """A batch takes at least 0.3 s, so a fault the test sets off after K outputs finds the job still running."""

    def __call__(self, batch: dict) -> dict:
        time.sleep(0.3)
        return super().__call__(batch)


def _opts(ckpt: str, out, **kw) -> BatchOptions:
    return BatchOptions(checkpoint=ckpt, output=out if not isinstance(out, (str, Path)) else open_storage(str(out)),
                        batch_size=4, progress=False, **kw)


def _in_thread(fn):
    done: dict = {}

    def run():
        try:
            done["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            done["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def _s3_outputs(s3, bucket: str, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".jpg")]


def _wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class FillsUp(LocalStorage):
    """A disk with room for `room` images: each JPEG write claims a numbered slot (atomically, whichever process
    writes), and the write that finds none left fails halfway with ENOSPC, as the kernel's would."""

    def __init__(self, root: str, slots: str, room: int):
        super().__init__(root)
        self.slots, self.room = slots, room

    def write(self, key: str, data: bytes) -> None:
        if not key.endswith(".jpg"):
            return super().write(key, data)
        for slot in range(self.room + 1):
            try:
                os.close(os.open(os.path.join(self.slots, str(slot)), os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                continue
        with self.open_write(key) as f:
            f.write(data[:100])
            if slot >= self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write(data[100:])


def test_a_full_disk_stops_the_job_with_one_line_and_the_rerun_completes(ray_cluster, cyclegan_ckpt, photos, tmp_path):
    out, slots = tmp_path / "out", tmp_path / "slots"
    slots.mkdir()
    with pytest.raises(StorageFullError) as stopped:
        stylize(str(photos), _opts(cyclegan_ckpt, FillsUp(str(out), str(slots), room=12)))
    message = str(stopped.value)
    assert "\n" not in message and message.startswith("stylize stopped: no space left on /")
    said = re.search(r"at least (\d+) of 40 outputs are done", message)
    assert f"(writing {out}/" in message and said and int(said.group(1)) <= 12
    written = sorted(out.glob("*.jpg"))
    assert len(written) == 12 and not list(out.glob(".tmp-*"))  # no half-written file, none under a final name
    assert all(decode_image(p.read_bytes(), p.name).shape == (256, 256, 3) for p in written)
    assert (out / MANIFEST).exists() and not (out / REPORT).exists()  # the job is not recorded as finished
    again = stylize(str(photos), _opts(cyclegan_ckpt, out))  # space freed: the same job completes, exactly once
    assert again.report["counts"] == {"inputs": 40, "outputs": 40, "written": 28, "skipped_existing": 12,
                                      "rejected": 0}


def _zip_of(uri: str, tmp_path: Path, name: str) -> bytes:
    assemble(open_storage(uri), str(tmp_path / name), min_images=1)
    return (tmp_path / name).read_bytes()


def _s3_job_behind_a_proxy(photos, ckpt, s3, bucket, s3_endpoint, tmp_path, monkeypatch, window_s: float):
    """The photos on S3 and the zip of a stylize run without an outage; then S3 reached through an OutageProxy (the
    job and its workers: the storage carries the endpoint) with this retry window: (source, plain zip, proxy)."""
    import gan.io.storage as storage_module
    for p in sorted(photos.iterdir()):
        s3.put_object(Bucket=bucket, Key=f"in/{p.name}", Body=p.read_bytes())
    src = f"s3://{bucket}/in"
    stylize(src, _opts(ckpt, f"s3://{bucket}/plain"))
    plain = _zip_of(f"s3://{bucket}/plain", tmp_path, "plain.zip")
    proxy = OutageProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(storage_module, "RETRY_WINDOW_S", window_s)
    return src, plain, proxy


def _down_after_8_outputs(src: str, ckpt: str, s3, bucket: str, prefix: str, proxy: OutageProxy):
    """Stylize `src` to s3://bucket/prefix in a thread (batches slowed so it is still running) and take the endpoint
    down once 8 outputs are there: the thread and its outcome."""
    thread, done = _in_thread(lambda: stylize(src, _opts(ckpt, f"s3://{bucket}/{prefix}", actor_cls=SlowActor)))
    _wait_for(lambda: len(_s3_outputs(s3, bucket, prefix)) >= 8, "8 outputs before the outage")
    proxy.take_down()
    return thread, done


def test_an_s3_outage_within_the_window_is_ridden_out_and_the_zip_is_unchanged(
        ray_cluster, cyclegan_ckpt, photos, s3, bucket, s3_endpoint, tmp_path, monkeypatch):
    """Stylize S3 -> S3 while the endpoint goes away after 8 outputs and comes back after the job met the outage
    3 times: the job goes on and completes, and its zip is that of a run without an outage, byte for byte."""
    src, plain, proxy = _s3_job_behind_a_proxy(photos, cyclegan_ckpt, s3, bucket, s3_endpoint, tmp_path, monkeypatch,
                                               window_s=60.0)
    try:
        thread, done = _down_after_8_outputs(src, cyclegan_ckpt, s3, bucket, "ride", proxy)
        _wait_for(lambda: proxy.refused >= 3, "the job to meet the outage")
        proxy.bring_up()
        thread.join(180)
        assert not thread.is_alive() and "error" not in done, done.get("error")
        assert done["result"].report["counts"]["outputs"] == 40 and done["result"].report["counts"]["rejected"] == 0
    finally:
        proxy.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert _zip_of(f"s3://{bucket}/ride", tmp_path, "ride.zip") == plain


def test_the_command_line_says_an_outage_or_a_full_disk_in_one_line_with_exit_1(capsys):
    for fault in (StorageFullError("stylize stopped: no space left on / (writing /x/a.jpg); 3 of 9 outputs are done"),
                  StorageUnavailableError("stylize stopped: S3 at http://h did not answer for 60 s (...); 3 of 9 "
                                          "outputs are done")):
        def main(argv, fault=fault):
            raise fault
        assert run_main(main, []) == 1  # fixed outside the job (space, the endpoint): a rerun continues
        assert capsys.readouterr().err == f"error: {fault}\n"


def test_a_failed_write_leaves_no_temp_file_and_names_the_device(tmp_path, monkeypatch):
    storage = LocalStorage(str(tmp_path))

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageFullError, match=r"no space left on /.* \(writing .*a\.jpg\)"):
        storage.write("a.jpg", b"x" * 1000)
    assert os.listdir(tmp_path) == []


CUT_SHORT_IMPORT = """
import sys
from gan.io.storage import open_storage

def cancel_there(frame, event, arg):  # Ray cancelling the task: an exception raised where the task happens to be
    if event == "call" and frame.f_code.co_filename.endswith("boto3/resources/factory.py"):
        sys.settrace(None)
        raise KeyboardInterrupt("task cancelled")

sys.settrace(cancel_there)
try:
    import boto3
except KeyboardInterrupt:
    pass
sys.settrace(None)
assert "boto3" not in sys.modules and "boto3.utils" in sys.modules  # what the cut-short import left
storage = open_storage(sys.argv[1])
before = storage.read("before.txt")  # a read first, as the next task's decode stage did
storage.write("a.txt", before + b", written after the cut")
print(storage.read("a.txt").decode())
"""


def test_s3_works_in_a_worker_whose_first_boto3_import_a_cancelled_task_cut_short(s3, bucket):
    """A task cancelled inside the worker's first `import boto3` leaves boto3's finished submodules without their
    package; the worker process lives on for later tasks, whose S3 clients must still work (CI saw every later job
    in such a worker fail with "module 'boto3' has no attribute 'utils'")."""
    s3.put_object(Bucket=bucket, Key="cut/before.txt", Body=b"read")
    done = subprocess.run([sys.executable, "-c", CUT_SHORT_IMPORT, f"s3://{bucket}/cut"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "read, written after the cut", done.stderr[-2000:]
    assert s3.get_object(Bucket=bucket, Key="cut/a.txt")["Body"].read() == b"read, written after the cut"


def test_an_s3_file_goes_up_as_it_is_written_and_appears_only_when_whole(s3, bucket, monkeypatch):
    """S3's open_write: past two parts a multipart upload, a part at a time (nothing spooled to local disk), not an
    object until the block ends; a writer may seek back into its last part, so a zip written there is byte for
    byte a local file's; an error aborts the upload, and one left by a killed writer is aborted by the next."""
    import io
    import zipfile

    import numpy as np

    from gan.batch.submission import zip_entry
    from gan.io.storage import S3Storage, S3Upload
    monkeypatch.setattr(S3Upload, "part_bytes", 5 * 1024 ** 2)  # S3's smallest part
    monkeypatch.setattr(S3Upload, "keep_bytes", 5 * 1024 ** 2)
    storage, rng = S3Storage(bucket, "out"), np.random.default_rng(0)
    blobs = [rng.bytes(700_000) for _ in range(25)]  # ~17.5 MB: two parts sent as it is written, then the last
    local = io.BytesIO()
    with zipfile.ZipFile(local, "w", zipfile.ZIP_STORED) as zf:
        for i, blob in enumerate(blobs):
            zf.writestr(zip_entry(f"{i}.bin"), blob)
    left = s3.create_multipart_upload(Bucket=bucket, Key="out/a.zip")["UploadId"]  # a killed writer's

    def uploads() -> list[str]:
        return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    with storage.open_write("a.zip") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for i, blob in enumerate(blobs):
                zf.writestr(zip_entry(f"{i}.bin"), blob)
                if i == 15:  # one part sent (at 10 MiB written)
                    going = uploads()
                    assert len(going) == 1 and going != [left] and not storage.exists("a.zip")
    got = s3.get_object(Bucket=bucket, Key="out/a.zip")
    assert got["Body"].read() == local.getvalue() and got["ETag"].strip('"').endswith("-3")
    assert uploads() == []

    with pytest.raises(RuntimeError, match="stopped"):
        with storage.open_write("b.bin") as f:
            f.write(rng.bytes(11 * 1024 ** 2))
            raise RuntimeError("stopped")
    assert not storage.exists("b.bin") and uploads() == []
    with pytest.raises(io.UnsupportedOperation, match=f"s3://{bucket}/out/c.bin: can seek only within the last"):
        with storage.open_write("c.bin") as f:
            f.write(rng.bytes(11 * 1024 ** 2))
            f.seek(0)
    assert not storage.exists("c.bin") and uploads() == []
    big = rng.bytes(23 * 1024 ** 2)  # one write of 23 MiB: parts of 5 MiB as it goes (8 MiB kept back, then sent)
    with storage.open_write("big.bin") as f:
        f.write(big)
    assert storage.read("big.bin") == big
    assert s3.head_object(Bucket=bucket, Key="out/big.bin")["ETag"].strip('"').endswith("-4") and uploads() == []
    with storage.open_write("small.bin") as f:  # under two parts: one PUT
        f.write(b"abc")
        f.seek(1)
        f.write(b"X")
    assert storage.read("small.bin") == b"aXc" and uploads() == []


TERM_AT_BATCH = """
import os, signal, sys, time
import gan.batch.engine as engine
from jobs import stylize as stylize_job
from jobs.cli import run_main

def sent():
    with open(os.environ["TERM_SENT"], "w") as f:
        f.write(repr(time.time()))

class TermAtBatch(engine.GeneratorActor):
    calls = 0

    def __call__(self, batch):
        TermAtBatch.calls += 1
        if TermAtBatch.calls == 4 and os.environ["STOP_SIGNAL"] in ("SIGTERM", "SIGINT"):
            sent()  # a known point: 3 batches through the model, the rest not yet
            os.kill(int(os.environ["DRIVER_PID"]), getattr(signal, os.environ["STOP_SIGNAL"]))
        return super().__call__(batch)

if os.environ["STOP_SIGNAL"] == "SIGINT inside Ray Data":
    # Ctrl-C landing in a window that the signal at a batch hits only now and then: Ray Data has its first output
    # back and has not yet handed its iterator to the job (the traceback holds it, as Ray Data's own frame would)
    import ray.data.dataset as dataset
    execute = dataset.Dataset._execute_to_iterator

    def interrupted(self, *args, **kwargs):
        started = execute(self, *args, **kwargs)  # noqa: F841 - held here as in Ray Data's frame
        sent()
        raise KeyboardInterrupt

    dataset.Dataset._execute_to_iterator = interrupted

if __name__ == "__main__":
    # Ctrl-C as at a terminal: a shell starts background commands with SIGINT ignored (pytest run with `&`), and
    # Python then leaves it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["DRIVER_PID"] = str(os.getpid())
    engine.GeneratorActor = TermAtBatch
    sys.exit(run_main(stylize_job.main, sys.argv[1:]))
"""


def _ours(stderr: str) -> list[str]:
    """stderr's lines less those the shared test cluster's workers forward (a job's own Ray keeps them in its logs)."""
    return [ln for ln in stderr.strip().splitlines() if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=", ln)]


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "SIGINT inside Ray Data"])
def test_sigterm_or_ctrl_c_stops_a_local_job_in_seconds_with_one_line_and_the_rerun_completes(
        ray_cluster, cyclegan_ckpt, photos, tmp_path, stop):
    """`kill` (SIGTERM) or Ctrl-C (SIGINT) to `jobs.stylize` on its own local Ray, sent from the model actor at its
    4th batch, or Ctrl-C inside Ray Data as it hands its first output back: exit 130 within seconds, one line saying
    how far it got (no traceback of Ray Data's executor shutting down after Ray), no temp file; the rerun writes
    only what is missing."""
    out, sent = tmp_path / "out", tmp_path / "term-sent"
    env = {**os.environ, "TERM_SENT": str(sent), "STOP_SIGNAL": stop,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", TERM_AT_BATCH, "--checkpoint", cyclegan_ckpt, "--input",
                           str(photos), "--output", str(out), "--batch-size", "4", "--actors", "1", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    ended = time.time()
    err = _ours(proc.stderr)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert ended - float(sent.read_text()) < 15  # stopped within seconds of the signal, its Ray included
    written = sorted(out.glob("*.jpg"))
    said = re.fullmatch(r"stylize stopped: (\d+) of 40 outputs are done \(rerun the same command to continue\)",
                        err[-1] if err else "")
    assert len(err) == 1 and said, err
    assert int(said.group(1)) <= len(written) < 40 and not list(out.glob(".tmp-*"))
    assert all(decode_image(p.read_bytes(), p.name).shape == (256, 256, 3) for p in written)
    again = stylize(str(photos), _opts(cyclegan_ckpt, out))
    assert again.report["counts"] == {"inputs": 40, "outputs": 40, "written": 40 - len(written),
                                      "skipped_existing": len(written), "rejected": 0}


def test_a_damaged_latest_checkpoint_is_skipped_and_none_intact_fails_at_once(finished_run, tmp_path, capsys):
    from jobs import train as train_job
    args = finished_run.copy_to(tmp_path / "runs")  # 3 epochs done: checkpoints of epochs 0, 1 and 2
    run = tmp_path / "runs" / finished_run.folder.name
    latest = sorted(run.glob("checkpoint_epoch_*"))[-1]
    state = latest / STATE_FILE
    state.write_bytes(state.read_bytes()[:1000])  # truncated
    capsys.readouterr()
    assert train_job.main([*args, "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert f"skipped a damaged checkpoint: {latest}/{STATE_FILE}" in out
    history = json.loads((sorted(run.glob("checkpoint_epoch_*"))[-1] / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # continued from epoch 1's checkpoint: epoch 2 again
    for folder in run.glob("checkpoint_epoch_*"):
        (folder / STATE_FILE).write_bytes(b"garbage")
    code = run_main(train_job.main, [*args, "--epochs", "5"])
    err = _ours(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "no intact run checkpoint to continue from" in err[0]


def test_a_damaged_generator_file_is_one_line_and_exit_2(ray_cluster, cyclegan_ckpt, photos, tmp_path, capsys):
    from jobs import stylize as stylize_job
    broken = tmp_path / "g.pt"
    broken.write_bytes(Path(cyclegan_ckpt).read_bytes()[:5000])
    code = run_main(stylize_job.main, ["--checkpoint", str(broken), "--input", str(photos), "--output",
                                       str(tmp_path / "o"), "--no-progress"])
    err = _ours(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "not a readable checkpoint" in err[0] and "Traceback" not in err[0]


def _no_write_task_running() -> bool:
    """No write task of a stopped job still runs. Ray Data cancels them when the job stops, but asynchronously: one
    in its retry loop may outlive the stop by up to its window, and would land its output once S3 is back."""
    import ray
    from ray.util.state import list_tasks
    running = list_tasks(address=ray.get_runtime_context().gcs_address,  # this Ray's, whatever else runs here
                         filters=[("state", "=", "RUNNING")], limit=10_000)
    return not [t for t in running if "WriteStage" in t.name]


def test_an_s3_outage_past_the_window_stops_with_one_line_and_the_rerun_completes(
        ray_cluster, cyclegan_ckpt, photos, s3, bucket, s3_endpoint, tmp_path, monkeypatch):
    """The endpoint goes away after 8 outputs and stays away past the retry window: the job stops with a
    StorageUnavailableError naming the endpoint and how many outputs are done. Once it is back, the rerun writes only
    what is missing and the zip is that of a run without an outage, byte for byte."""
    src, plain, proxy = _s3_job_behind_a_proxy(photos, cyclegan_ckpt, s3, bucket, s3_endpoint, tmp_path, monkeypatch,
                                               window_s=3.0)
    try:
        thread, done = _down_after_8_outputs(src, cyclegan_ckpt, s3, bucket, "past", proxy)
        thread.join(180)
        assert not thread.is_alive(), "the job did not stop"
        error = done.get("error")
        assert isinstance(error, StorageUnavailableError), error
        message = str(error)
        assert "\n" not in message and f"S3 at {proxy.url} did not answer for 3 s" in message
        _wait_for(_no_write_task_running, "the stopped job's write tasks to end")
        before = len(_s3_outputs(s3, bucket, "past"))
        said = re.search(r"at least (\d+) of 40 outputs are done", message)  # those the driver saw written
        assert said and int(said.group(1)) <= before and 8 <= before < 40, message
        proxy.bring_up()
        rerun, done = _in_thread(lambda: stylize(src, _opts(cyclegan_ckpt, f"s3://{bucket}/past")))
        rerun.join(180)  # in the same process: the stopped job's actors must not still hold the CPUs it needs
        assert not rerun.is_alive() and "error" not in done, done.get("error") or "the rerun did not finish"
        assert done["result"].report["counts"] == {"inputs": 40, "outputs": 40, "written": 40 - before,
                                          "skipped_existing": before, "rejected": 0}
    finally:
        proxy.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert _zip_of(f"s3://{bucket}/past", tmp_path, "past.zip") == plain


TRAIN_TINY = ["--model", "cyclegan", "--image-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "1",
              "--batch-size", "2", "--eval-photos", "0"]


class AskAt:
    """A training hook (in rank 0's worker): at the middle of each epoch in `epochs`, tell the test (a file) and wait
    until it answers (another file), so the test acts on the storage at a known point of the run."""

    def __init__(self, folder: str, epochs: tuple[int, ...]):
        self.folder, self.epochs = folder, epochs

    def __call__(self, event: str, rank: int, epoch: int) -> None:
        asked, answered = f"{self.folder}/asked-{epoch}", f"{self.folder}/answered-{epoch}"
        if event == "mid_epoch" and rank == 0 and epoch in self.epochs and not os.path.exists(asked):
            Path(asked).write_text("")
            while not os.path.exists(answered):
                time.sleep(0.05)


def _registered(s3, bucket: str, run: str, checkpoint: str) -> bool:
    """Ray Train's controller has recorded `checkpoint` in the run's snapshot (its own write, after the worker's
    upload): the test takes S3 away only after it, so the outage meets the worker's next save, at a known point."""
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{run}/checkpoint_manager_snapshot.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return False
    return checkpoint.encode() in body


def test_a_checkpoint_upload_past_the_window_is_not_tried_again_by_ray_train(monkeypatch):
    """Ray Train's `report` tries a checkpoint upload again (3 tries in all) when the error's text names a passing
    AWS error, as an outage's does: the storage retry window must be spent once, not three times (60 s would have
    been 3 minutes). Here the upload meets an unreachable S3, under Ray Train's own retry and tokens."""
    import gan.io.storage as storage_module
    from ray._common.retry import call_with_retry
    from ray.train.v2._internal.constants import AWS_RETRYABLE_TOKENS
    from gan.train.run_checkpoint import CheckpointNotSaved, persist
    monkeypatch.setattr(storage_module, "RETRY_WINDOW_S", 0.0)  # one try of ours per window
    tries = []

    class Unreachable:  # a Ray Train StorageContext whose S3 endpoint resets every connection
        storage_filesystem = None

        def build_checkpoint_path_from_name(self, name: str) -> str:
            return f"bkt/runs/o/{name}"

        def persist_current_checkpoint(self, checkpoint, name: str):
            tries.append(name)
            raise OSError(f"When uploading 'bkt/runs/o/{name}/state.pt': AWS Error NETWORK_CONNECTION during "
                          "PutObject operation: curlCode: 56, Failure when receiving data from the peer")

    with pytest.raises(CheckpointNotSaved) as caught:
        call_with_retry(lambda: persist(Unreachable(), None, "checkpoint_epoch_00002"), "upload checkpoint",
                        match=AWS_RETRYABLE_TOKENS, max_attempts=3)
    assert tries == ["checkpoint_epoch_00002"]
    assert isinstance(caught.value.fault, StorageUnavailableError)
    assert str(caught.value.fault).startswith("S3 at AWS did not answer for 0 s (saving checkpoint_epoch_00002: ")


def test_training_checkpoints_to_s3_ride_out_an_outage_and_past_the_window_stop_with_one_line(
        ray_cluster, demo_data, s3, bucket, s3_endpoint, tmp_path, monkeypatch):
    """Two workers train to S3 through a proxy. In epoch 2 the endpoint goes away and comes back once the run has
    met it 3 times: epoch 2's checkpoint is saved and training goes on. In epoch 3 it goes away for good: the save
    retries for the window, then every rank stops and the run fails with one line naming the endpoint and its
    last complete checkpoint. Once S3 is back, the same command continues from that checkpoint and finishes."""
    import gan.io.storage as storage_module
    from gan.train.driver import run_training
    from jobs import train as train_job
    proxy = OutageProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(storage_module, "RETRY_WINDOW_S", 4.0)  # carried to the workers by the trainer's config
    _, settings = train_job.parse([*TRAIN_TINY, "--data", str(demo_data), "--epochs", "3", "--num-workers", "2"])
    storage, folder = f"s3://{bucket}/runs", str(tmp_path)
    try:
        thread, done = _in_thread(lambda: run_training(settings, "o", storage, hook=AskAt(folder, (1, 2)),
                                                       echo=lambda line: None))
        _wait_for(lambda: os.path.exists(f"{folder}/asked-1") or not thread.is_alive(), "epoch 2", 180)
        _wait_for(lambda: _registered(s3, bucket, "runs/o", "checkpoint_epoch_00000"), "epoch 1's checkpoint")
        proxy.take_down()
        Path(f"{folder}/answered-1").write_text("")
        _wait_for(lambda: proxy.refused >= 3, "the save to meet the outage")
        proxy.bring_up()
        _wait_for(lambda: os.path.exists(f"{folder}/asked-2") or not thread.is_alive(), "epoch 3", 180)
        _wait_for(lambda: _registered(s3, bucket, "runs/o", "checkpoint_epoch_00001"), "epoch 2's checkpoint")
        proxy.take_down()
        Path(f"{folder}/answered-2").write_text("")
        thread.join(120)
        assert not thread.is_alive(), "the run did not stop"
        error = done.get("error")
        assert isinstance(error, StorageUnavailableError), error
        message = str(error)
        assert "\n" not in message and message.startswith(f"train stopped: S3 at {proxy.url} did not answer for 4 s "
                                                          "(saving checkpoint_epoch_00002: ")
        assert message.endswith("the run's last complete checkpoint: checkpoint "
                                f"{bucket}/runs/o/checkpoint_epoch_00001 (rerun the same command to continue from it)")
        proxy.bring_up()
        run_training(settings, "o", storage, echo=lambda line: None)
    finally:
        proxy.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    history = json.loads(s3.get_object(Bucket=bucket, Key="runs/o/checkpoint_epoch_00002/history.json")["Body"].read())
    assert [h["epoch"] for h in history] == [0, 1, 2]  # the third epoch trained again, each epoch once


def test_a_full_disk_at_a_training_checkpoint_stops_at_once_and_the_last_one_stays_loadable(
        ray_cluster, demo_data, tmp_path, capsys):
    """Epoch 2's checkpoint meets a full disk (its state file is /dev/full, which refuses every byte with ENOSPC as
    a full filesystem does): the run stops at once, exit 1 and one line naming the device and the last complete
    checkpoint, which still loads. With the space back, the same command continues from it."""
    from gan.train.run_checkpoint import read_checkpoint
    from jobs import train as train_job
    runs = tmp_path / "runs"
    blocked = runs / "d" / "checkpoint_epoch_00001"
    blocked.mkdir(parents=True)
    (blocked / STATE_FILE).symlink_to("/dev/full")
    args = [*TRAIN_TINY, "--data", str(demo_data), "--storage", str(runs), "--name", "d", "--epochs", "3"]
    code = run_main(train_job.main, args)
    err = _ours(capsys.readouterr().err)
    first = runs / "d" / "checkpoint_epoch_00000"
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: train stopped: no space left on /") and "saving checkpoint_epoch_00001" in err[0]
    assert err[0].endswith(f"the run's last complete checkpoint: checkpoint {first} (rerun the same command to "
                           "continue from it)")
    assert read_checkpoint(first, str(first)).state["epoch"] == 0  # the previous checkpoint stays loadable
    (blocked / STATE_FILE).unlink()  # space freed
    assert run_main(train_job.main, args) == 0
    history = json.loads((runs / "d" / "checkpoint_epoch_00002" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
