"""The README's cluster commands, for real, against a Ray head started here with `ray start` (token auth on):
`ray job submit --working-dir .` of the pipeline, `ray job stop` of a stylize job, `serve deploy` of
serve/config.yaml and a rolling checkpoint update, then `ray stop`.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gan.train.demo_data import write_demo_data
from tests import processes
from tests.conftest import ROOT, free_port
from tests.helpers import image_bytes

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TINY_PIPELINE = ["--photos", "24", "--paintings", "12", "--epochs", "1", "--image-size", "32", "--ngf", "8",
                 "--features", "pixels"]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def head(without_shared_ray):
    """`ray start --head --port=0` on 127.0.0.1 with its dashboard (the Jobs API) on a free port; `ray stop` after.

    Token auth is on, with the token in RAY_AUTH_TOKEN for every command, as a cluster's users would set it.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    dashboard = free_port()
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--port=0", "--node-ip-address=127.0.0.1", "--num-cpus=3",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    address = f"http://127.0.0.1:{dashboard}"
    try:
        yield address, env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=180)
    assert not _port_open(dashboard), "the dashboard port is still open after ray stop"


def _cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _status(env: dict, address: str, job_id: str) -> str:
    """The job's status from `ray job status` (the CLI reads the token from the environment it is given)."""
    out = _cli(env, "ray", "job", "status", "--address", address, job_id, timeout=60)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    for word, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("stopped", "STOPPED")):
        if re.search(rf"Job '{re.escape(job_id)}' (was )?{word}", text):
            return status
    found = re.search(r"Status for job '[^']+': (\w+)", text)
    assert found, text[-1000:]
    return found.group(1)


def _wait_status(env: dict, address: str, job_id: str, want: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(env, address, job_id)
        if status in want:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {status} after {timeout} s")


@pytest.fixture(scope="module")
def pipeline_run(head, tmp_path_factory) -> Path:
    """The README's form: `ray job submit --working-dir . -- python -m jobs.pipeline --workdir ...`."""
    address, env = head
    work = tmp_path_factory.mktemp("job") / "work"
    started = time.monotonic()
    done = _cli(env, "ray", "job", "submit", "--address", address, "--submission-id", "pipeline-1",
                "--working-dir", ".", "--", "python", "-m", "jobs.pipeline", "--workdir", str(work), *TINY_PIPELINE)
    print(f"ray job submit of the pipeline: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "finished in" in done.stdout  # the job's own lines come back through `ray job submit`'s log tail
    assert _status(env, address, "pipeline-1") == "SUCCEEDED"
    return work


def test_ray_job_submit_runs_the_pipeline(pipeline_run):
    import zipfile
    with zipfile.ZipFile(pipeline_run / "images.zip") as z:
        names = z.namelist()
    assert len(names) == 24 and all(n.endswith(".jpg") for n in names)
    assert (pipeline_run / "images.zip.evaluation.json").exists() and (pipeline_run / "generator.pt").exists()


def test_ray_job_stop_leaves_no_partial_outputs(head, pipeline_run, tmp_path):
    """A stylize job stopped half-way leaves only whole JPEGs (temp files at most); rerun (with more actors and
    larger batches, which do not change the job), it finishes the rest."""
    address, env = head
    photos = 120  # seen: 18 done when the stop lands (batches of 1 on one actor), the rest for the rerun
    write_demo_data(tmp_path / "many", photos=photos, paintings=1, seed=3)
    out = tmp_path / "out"
    cmd = ["python", "-m", "jobs.stylize", "--checkpoint", str(pipeline_run / "generator.pt"),
           "--input", str(tmp_path / "many" / "photo_jpg"), "--output", str(out), "--cpus-per-actor", "1",
           "--no-progress"]
    tag = processes.new_tag()  # in the job's processes' environment, to tell when the last of them is gone
    sub = _cli(env, "ray", "job", "submit", "--address", address, "--submission-id", "stylize-1", "--no-wait",
               "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": {processes.TAG: tag}}), "--",
               *cmd, "--batch-size", "1", "--actors", "1")
    assert sub.returncode == 0, sub.stderr[-2000:]
    deadline = time.monotonic() + 300
    while len(list(out.glob("*.jpg"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = _cli(env, "ray", "job", "stop", "--address", address, "stylize-1")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert _wait_status(env, address, "stylize-1", {"STOPPED", "SUCCEEDED", "FAILED"}, 120) == "STOPPED"
    processes.wait_until_idle(tag)  # its actors and write tasks may outlive its driver: count after they end
    jpgs = sorted(out.glob("*.jpg"))
    assert 5 <= len(jpgs) < photos
    for p in jpgs:  # every output that exists is a whole image
        with Image.open(p) as img:
            img.load()
            assert img.size == (256, 256)
    leftovers = {p.name for p in out.iterdir()} - {p.name for p in jpgs} - {"_manifest.json"}
    assert all(".tmp" in name for name in leftovers), leftovers  # atomic writes: at most temp files remain

    again = _cli(env, "ray", "job", "submit", "--address", address, "--submission-id", "stylize-2",
                 "--working-dir", ".", "--", *cmd, "--batch-size", "8", "--actors", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _status(env, address, "stylize-2") == "SUCCEEDED"
    assert f"{photos - len(jpgs)} new, {len(jpgs)} already done" in again.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in out.glob("*.jpg")] + ["_manifest.json", "_report.json"]) and len(list(out.glob("*.jpg"))) == photos


def _serve_config(tmp_path: Path, checkpoint: Path, port: int, name: str) -> Path:
    """serve/config.yaml as shipped, with this test's port, checkpoint and one small replica."""
    cfg = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    cfg["http_options"].update(host="127.0.0.1", port=port)
    dep = cfg["applications"][0]["deployments"][0]
    dep["user_config"]["checkpoint"] = str(checkpoint)
    dep["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    dep["ray_actor_options"]["num_cpus"] = 0.5
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _post(port: int, data: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/stylize", data=data,
                                 headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError) as e:
        return 0, str(e).encode()


def _second_generator(first: Path, tmp_path: Path) -> Path:
    """Another checkpoint of the same architecture: the first with its last layer's weights changed."""
    import torch

    from gan.checkpoint import from_bytes, to_bytes
    ckpt = from_bytes(first.read_bytes(), str(first))
    last = sorted(k for k in ckpt.state_dict if k.endswith(".weight"))[-1]
    ckpt.state_dict[last] = -ckpt.state_dict[last]
    path = tmp_path / "g2.pt"
    path.write_bytes(to_bytes(ckpt))
    assert not torch.equal(ckpt.state_dict[last], from_bytes(first.read_bytes()).state_dict[last])
    return path


def test_serve_deploy_and_a_rolling_checkpoint_update(head, pipeline_run, tmp_path):
    address, env = head
    port = free_port()
    first, second = pipeline_run / "generator.pt", _second_generator(pipeline_run / "generator.pt", tmp_path)
    started = time.monotonic()
    deployed = _cli(env, "serve", "deploy", "--address", address, str(_serve_config(tmp_path, first, port, "a.yaml")))
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    photo = image_bytes(seed=5)
    deadline = time.monotonic() + 180
    status, body = _post(port, photo)
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        status, body = _post(port, photo)
    assert status == 200 and Image.open(io.BytesIO(body)).size == (256, 256)
    print(f"serve deploy to the first answer: {time.monotonic() - started:.1f} s")
    before = body

    results: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            results.append(_post(port, photo))

    asking = threading.Thread(target=keep_asking)
    asking.start()
    try:
        redeployed = _cli(env, "serve", "deploy", "--address", address,
                          str(_serve_config(tmp_path, second, port, "b.yaml")))
        assert redeployed.returncode == 0, redeployed.stderr[-2000:]
        deadline = time.monotonic() + 180
        while not (results and results[-1][0] == 200 and results[-1][1] != before) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # a few more requests on the new checkpoint
    finally:
        stop.set()
        asking.join(timeout=120)
    codes = [code for code, _ in results]
    assert codes and all(code == 200 for code in codes), f"failed requests during the rollout: {set(codes)}"
    bodies = [body for _, body in results]
    assert bodies[0] == before and bodies[-1] != before  # served the old checkpoint, then the new one
    switched = next(i for i, b in enumerate(bodies) if b != before)
    assert all(b == bodies[-1] for b in bodies[switched:])  # and never the old one again
