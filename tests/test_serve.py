"""The Serve app on the local Ray, over real HTTP: stylize, generate, limits, batching, rollout, the web page."""
import concurrent.futures as cf
import io
import json
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
def app(ray_cluster, tmp_path_factory):
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
    user_config = {"checkpoint": _ckpt(d / "g1.pt", 1), "checkpoints": [str(d / "d.pt")],
                   "max_batch_size": 8, "batch_wait_timeout_s": 0.05, "max_upload_bytes": 2_000_000}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(GanServer.options(user_config=user_config).bind(), name="gan", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "dir": d, "config": user_config, "deployed": user_config}
    serve.shutdown()


@pytest.fixture
def server(app):
    """The app with its base settings (deployed again only where a test before this one changed them)."""
    deploy(app)
    return app


def deploy(server, **changes) -> None:
    """The app with these settings changed from the base ones, unless that is what runs. Each `serve.run` starts a
    new replica (~4 s here: Serve gives an app deployed from Python a new code version every time), so the tests
    that change settings come last in this module, take `app` as it is, and none changes them back."""
    from ray import serve
    from serve.app import GanServer
    wanted = {**server["config"], **changes}
    if wanted != server["deployed"]:
        serve.run(GanServer.options(user_config=wanted).bind(), name="gan", route_prefix="/")
        server["deployed"] = wanted


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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_browser_page_shows_nothing_broken_then_waits_then_the_painting_or_the_error(server, tmp_path):
    """The page's states in headless Chromium: before a photo no image box at all (no broken images); while the
    painting is made (the request held at a known point by the test) the photo and a waiting box; then the pair,
    the painting 256x256; and for a refused upload (a file that is no image) the server's error text, no box."""
    from playwright.sync_api import sync_playwright
    photo, bogus = tmp_path / "photo.jpg", tmp_path / "notes.jpg"
    photo.write_bytes(image_bytes(size=(320, 240)))
    bogus.write_bytes(b"this is not an image at all\n" * 10)
    visible_images = "() => [...document.images].filter(i => i.offsetParent !== null).map(i => i.id)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(server["url"] + "/")
        assert page.evaluate("() => document.body.dataset.state") == "empty"
        assert page.evaluate(visible_images) == []  # no boxes with alt text before there is a picture

        held = []
        page.route("**/stylize", lambda route: held.append(route))  # the answer waits until the test lets it go
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("body[data-state='painting']", timeout=30_000)
        while not held:
            page.wait_for_timeout(20)
        assert page.is_visible("#wait") and "Painting" in page.inner_text("#status")
        page.wait_for_selector("#original", state="visible", timeout=30_000)  # once the browser decoded it
        assert page.evaluate(visible_images) == ["original"]  # the photo, and a waiting box, not a broken image
        held[0].continue_()  # before unroute, which would settle a held route itself
        page.unroute("**/stylize")
        page.wait_for_selector("body[data-state='done']", timeout=30_000)
        size = page.evaluate("() => [document.getElementById('painting').naturalWidth, "
                             "document.getElementById('painting').naturalHeight]")
        assert size == [256, 256] and page.evaluate(visible_images) == ["original", "painting"]
        assert not page.is_visible("#wait")

        page.set_input_files("#file", str(bogus))
        page.wait_for_selector("body[data-state='error']", timeout=30_000)
        assert "not an image" in page.inner_text("#status")  # the JSON error's text
        page.wait_for_selector("#original", state="hidden", timeout=30_000)  # the browser cannot show it either
        assert page.evaluate(visible_images) == [] and not page.is_visible("#wait")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()


def test_new_checkpoint_rolls_out_without_dropping_requests(server):
    photo = image_bytes(seed=9)
    before = post(server["url"] + "/stylize", photo)[2]
    new_checkpoint = _ckpt(server["dir"] / "g2.pt", 2)
    codes, stop = [], time.monotonic() + 60

    def hammer():
        while time.monotonic() < stop and len(codes) < 400:
            codes.append(post(server["url"] + "/stylize", photo)[0])
            if getattr(hammer, "done", False):
                break

    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(hammer) for _ in range(2)]
        deploy(server, checkpoint=new_checkpoint)
        hammer.done = True
        for f in futures:
            f.result()
    assert codes and set(codes) == {200}
    after = post(server["url"] + "/stylize", photo)[2]
    assert after != before  # the new generator answers now


class HeldUpload:
    """A POST /stylize whose body arrives only in part until `finish()`: a slow client, held at a known point."""

    def __init__(self, url: str, body: bytes):
        import socket
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.body = body
        self.sock.sendall(f"POST /stylize HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:len(body) // 2])

    def finish(self) -> tuple[int, dict, bytes]:
        self.sock.sendall(self.body[len(self.body) // 2:])
        return self.response()

    def response(self) -> tuple[int, dict, bytes]:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body

    def drop(self) -> None:
        self.sock.close()


def _wait_stats(server, condition, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = _stats(server)
        if condition(stats):
            return stats
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {stats}"
        time.sleep(0.05)


def test_requests_that_arrive_together_are_one_batch(app):
    """A barrier, not a race: the batch waits up to 60 s, so it forms exactly when the 4th request arrives."""
    deploy(app, max_batch_size=4, batch_wait_timeout_s=60)
    before = _stats(app)["batch_sizes"].get("4", 0)
    with cf.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda i: post(app["url"] + "/stylize", image_bytes(seed=i))[0], range(4)))
    assert codes == [200] * 4
    assert _stats(app)["batch_sizes"].get("4", 0) == before + 1


def test_past_its_limit_a_replica_answers_503_with_retry_after_at_once_and_serves_the_rest(app):
    """max_batch_size 2 + max_queued_requests 1: a replica holds 3 requests. With 3 uploads held half-sent (the
    replica admitted them: a known point, read from /stats), a 4th is refused at once, 503 JSON with Retry-After,
    its body unread; the 3 then finish with 200, and the replica holds none after."""
    deploy(app, max_batch_size=2, max_queued_requests=1, retry_after_s=7)
    photo = image_bytes(seed=11)
    held = [HeldUpload(app["url"], photo) for _ in range(3)]
    _wait_stats(app, lambda s: s["in_progress"] == 3, "3 requests inside the replica")
    t0 = time.perf_counter()
    request = urllib.request.Request(app["url"] + "/stylize", data=photo, method="POST",
                                     headers={"Content-Type": "image/jpeg"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert time.perf_counter() - t0 < 5
    e = refused.value
    assert e.code == 503 and e.headers["Retry-After"] == "7" and e.headers["Content-Type"] == "application/json"
    assert "overloaded" in json.loads(e.read())["error"]
    results = [h.finish() for h in held]
    assert [code for code, _, _ in results] == [200, 200, 200] and all(is_256_jpeg(b) for _, _, b in results)
    stats = _wait_stats(app, lambda s: s["in_progress"] == 0, "the replica to empty")
    assert stats["refused"].get("503", 0) >= 1 and stats["peak_in_progress"] <= 3


def test_a_slow_or_vanished_client_is_freed_and_the_replica_keeps_serving(app):
    deploy(app, upload_timeout_s=2)
    photo = image_bytes(seed=12)
    slow = HeldUpload(app["url"], photo)  # sends half, then nothing: refused once the timeout passes
    status, headers, body = slow.response()
    assert status == 408 and headers["content-type"] == "application/json" and b"did not arrive" in body
    gone = HeldUpload(app["url"], photo)
    _wait_stats(app, lambda s: s["in_progress"] == 1, "the upload inside the replica")
    gone.drop()  # the client goes away mid-upload
    _wait_stats(app, lambda s: s["in_progress"] == 0, "the replica to free the vanished upload")
    assert post(app["url"] + "/stylize", photo)[0] == 200


def test_a_damaged_generator_file_leaves_the_replica_up_answering_503_with_the_reason(app):
    broken = app["dir"] / "broken.pt"
    broken.write_bytes((app["dir"] / "g1.pt").read_bytes()[:4000])
    deploy(app, checkpoint=str(broken))
    status, ctype, body = post(app["url"] + "/stylize", image_bytes())
    assert status == 503 and ctype == "application/json"
    error = json.loads(body)["error"]
    assert "broken.pt: not a readable checkpoint" in error and "Traceback" not in error
    assert post(app["url"] + "/generate?seed=1&count=1", b"", "application/octet-stream")[0] == 200


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


