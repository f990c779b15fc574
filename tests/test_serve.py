"""The Serve app on the local Ray, over real HTTP: stylize, generate, limits, batching, rollout, the web page."""
import concurrent.futures as cf
import io
import shutil
import time
import urllib.error
import urllib.request
import uuid
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gan.checkpoint import generator_checkpoint, to_bytes
from gan.io.images import decode_image
from gan.models.cyclegan import CycleGANConfig, ResnetGenerator
from gan.models.dcgan import DCGANConfig, DCGANGenerator
from tests.conftest import ROOT, free_port
from tests.helpers import bomb_png, image_bytes


def _ckpt(path, seed: int) -> str:
    torch.manual_seed(seed)
    path.write_bytes(to_bytes(generator_checkpoint("cyclegan", CycleGANConfig(ngf=8, n_blocks=1), ResnetGenerator(8, 1))))
    return str(path)


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    from ray import serve
    from serve.app import GanServer
    d = tmp_path_factory.mktemp("serve")
    cfg = DCGANConfig(image_size=64, ngf=8)
    torch.manual_seed(0)
    g = DCGANGenerator(cfg)
    for m in g.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            m.weight.data.normal_(0, 0.3)
    (d / "d.pt").write_bytes(to_bytes(generator_checkpoint("dcgan", cfg, g)))
    user_config = {"checkpoint": _ckpt(d / "g1.pt", 1), "dcgan_checkpoint": str(d / "d.pt"),
                   "max_batch_size": 8, "batch_wait_timeout_s": 0.05, "max_upload_bytes": 2_000_000}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(GanServer.options(user_config=user_config).bind(), name="gan", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "dir": d, "config": user_config}
    serve.shutdown()


def post(url: str, data: bytes, ctype: str = "image/jpeg", timeout: float = 60):
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def multipart(data: bytes, name: str = "photo.png", ctype: str = "image/png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def is_256_jpeg(data: bytes) -> bool:
    img = Image.open(io.BytesIO(data))
    return img.format == "JPEG" and img.size == (256, 256) and img.mode == "RGB"


def test_stylize_jpeg_png_and_multipart(server):
    url = server["url"] + "/stylize"
    status, ctype, body = post(url, image_bytes(size=(300, 200)))
    assert status == 200 and ctype == "image/jpeg" and is_256_jpeg(body)
    status, _, body = post(url, image_bytes("RGBA", fmt="PNG"), "image/png")
    assert status == 200 and is_256_jpeg(body)
    status, _, body = post(url, *multipart(image_bytes("L", fmt="PNG")))
    assert status == 200 and is_256_jpeg(body)
    with urllib.request.urlopen(server["url"] + "/healthz") as r:
        assert r.read() == b'{"status":"ok","stylize":true,"generate":true}'


@pytest.mark.parametrize("data,ctype,code,needle", [
    (b"x" * 2_100_000, "image/jpeg", 413, "limit"),
    (b"hello world", "text/plain", 415, "unsupported content type"),
    (b"definitely not a jpeg", "image/jpeg", 400, "not an image"),
    (image_bytes()[:3000], "image/jpeg", 400, "truncated"),
    (bomb_png(), "image/png", 400, "decompression bomb"),
    (b"", "image/jpeg", 400, "empty"),
])
def test_bad_uploads_get_json_errors(server, data, ctype, code, needle):
    status, rtype, body = post(server["url"] + "/stylize", data, ctype)
    assert status == code and rtype == "application/json"
    assert needle in body.decode() and "Traceback" not in body.decode()


def test_multipart_without_file_field_is_400(server):
    boundary = "b0undary"
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--{boundary}--\r\n".encode()
    status, _, data = post(server["url"] + "/stylize", body, f"multipart/form-data; boundary={boundary}")
    assert status == 400 and b"file" in data


def test_generate_is_seeded(server):
    a = post(server["url"] + "/generate?seed=3&count=1", b"", "application/octet-stream")
    b = post(server["url"] + "/generate?seed=3&count=1", b"", "application/octet-stream")
    c = post(server["url"] + "/generate?seed=4&count=1", b"", "application/octet-stream")
    assert a[0] == 200 and is_256_jpeg(a[2]) and a[2] == b[2] and a[2] != c[2]
    status, ctype, body = post(server["url"] + "/generate?seed=3&count=3", b"", "application/octet-stream")
    assert status == 200 and ctype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(body))
    entries = archive.infolist()
    assert [e.filename for e in entries] == ["3-000.jpg", "3-001.jpg", "3-002.jpg"]
    first = decode_image(archive.read("3-000.jpg"), "3-000.jpg").astype(int)
    alone = decode_image(a[2], "seed 3, count 1").astype(int)
    assert np.abs(first - alone).max() <= 2  # image i depends only on (seed, i), not on the count
    assert all(e.date_time == (1980, 1, 1, 0, 0, 0) for e in entries)  # no clock time in the zip
    assert post(server["url"] + "/generate?seed=3&count=3", b"", "application/octet-stream")[2] == body
    assert post(server["url"] + "/generate?count=1000", b"")[0] == 400


def _stats(server) -> dict:
    with urllib.request.urlopen(server["url"] + "/stats") as r:
        return yaml.safe_load(r.read())


def test_concurrent_clients_all_succeed(server):
    photo = image_bytes()

    def client(_):
        return [post(server["url"] + "/stylize", photo)[0] for _ in range(20)]

    with cf.ThreadPoolExecutor(8) as pool:
        codes = [c for r in pool.map(client, range(8)) for c in r]
    assert codes == [200] * 160


def test_requests_that_arrive_together_are_one_batch(server):
    """A barrier, not a race: the batch waits up to 60 s, so it forms exactly when the 4th request arrives."""
    from ray import serve
    from serve.app import GanServer
    serve.run(GanServer.options(user_config={**server["config"], "max_batch_size": 4, "batch_wait_timeout_s": 60})
              .bind(), name="gan", route_prefix="/")
    try:
        before = _stats(server)["batch_sizes"].get("4", 0)
        with cf.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda i: post(server["url"] + "/stylize", image_bytes(seed=i))[0], range(4)))
        assert codes == [200] * 4
        assert _stats(server)["batch_sizes"].get("4", 0) == before + 1
    finally:
        serve.run(GanServer.options(user_config=server["config"]).bind(), name="gan", route_prefix="/")


def test_a_chunked_upload_over_the_limit_is_413(server):
    import http.client
    host, port = server["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = (b"x" * 100_000 for _ in range(25))  # 2.5 MB, no Content-Length: only the streaming check sees it
    conn.request("POST", "/stylize", body=chunks, headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 413 and "limit" in body and resp.getheader("Content-Type") == "application/json"


def test_query_parameters_are_validated(server):
    for query in ("seed=-1", "seed=abc", "count=0", "count=x", f"seed={2 ** 64}"):
        status, ctype, body = post(server["url"] + "/generate?" + query, b"", "application/octet-stream")
        assert status == 400 and ctype == "application/json" and b"error" in body, query


def test_health_answers_while_a_large_upload_is_decoded(server):
    buf = io.BytesIO()
    Image.new("RGB", (8000, 8000), (120, 80, 40)).save(buf, "PNG")  # a small file, 64 M pixels to decode
    big = buf.getvalue()
    t0 = time.perf_counter()
    decode_image(big, "big.png")
    decode_s = time.perf_counter() - t0
    with cf.ThreadPoolExecutor(1) as pool:
        upload = pool.submit(post, server["url"] + "/stylize", big, "image/png")
        time.sleep(decode_s / 4)  # the upload is in, its decode under way
        t0 = time.perf_counter()
        with urllib.request.urlopen(server["url"] + "/healthz", timeout=60) as r:
            assert r.status == 200
        health_s = time.perf_counter() - t0
        assert upload.result()[0] == 200
    assert health_s < decode_s / 2, (health_s, decode_s)  # the decode ran off the event loop


def test_new_checkpoint_rolls_out_without_dropping_requests(server):
    from ray import serve
    from serve.app import GanServer
    photo = image_bytes(seed=9)
    before = post(server["url"] + "/stylize", photo)[2]
    new_config = {**server["config"], "checkpoint": _ckpt(server["dir"] / "g2.pt", 2)}
    codes, stop = [], time.monotonic() + 60

    def hammer():
        while time.monotonic() < stop and len(codes) < 400:
            codes.append(post(server["url"] + "/stylize", photo)[0])
            if getattr(hammer, "done", False):
                break

    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(hammer) for _ in range(2)]
        serve.run(GanServer.options(user_config=new_config).bind(), name="gan", route_prefix="/")
        hammer.done = True
        for f in futures:
            f.result()
    assert codes and set(codes) == {200}
    after = post(server["url"] + "/stylize", photo)[2]
    assert after != before  # the new generator answers now


def test_config_file_is_valid_for_serve_deploy():
    from ray.serve.schema import ServeDeploySchema
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(config)
    app = schema.applications[0]
    assert app.import_path == "serve.app:app"
    dep = app.deployments[0]
    assert dep.autoscaling_config["max_replicas"] >= 1 and dep.max_ongoing_requests >= dep.user_config["max_batch_size"]
    from serve.app import ServeConfig
    assert ServeConfig(**dep.user_config).checkpoint == "demo/generator.pt"  # the one typed config reads it


def test_one_typed_config_for_the_builder_and_reconfigure():
    from pydantic import ValidationError

    from serve.app import ServeConfig, build_app
    with pytest.raises(ValidationError, match="max_batch_sise"):
        ServeConfig(max_batch_sise=4)  # a misspelt key is refused, not ignored
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ServeConfig(max_upload_bytes=0)
    cfg = ServeConfig(checkpoint="g.pt", max_batch_size=4)
    deployment = build_app(cfg)._bound_deployment
    assert deployment._deployment_config.user_config == cfg.model_dump()  # what reconfigure() will be given


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_browser_uploads_a_photo_and_sees_the_painting(server, tmp_path):
    from playwright.sync_api import sync_playwright
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes(size=(320, 240)))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(server["url"] + "/")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#painting[data-ready='1']", timeout=30_000)
        size = page.evaluate("() => [document.getElementById('painting').naturalWidth, "
                             "document.getElementById('painting').naturalHeight]")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert size == [256, 256]
