"""Ray Serve app: a generator's images over HTTP, with request batching on each replica.

serve run serve/config.yaml            (or: serve run serve.app:build_app checkpoint=g.pt, or python -m serve)
POST /stylize    raw image body or multipart field "file" (JPEG/PNG/WebP, any size or mode) -> 256x256 JPEG
POST /generate?seed=S&count=K  -> K samples (one JPEG, or a zip when K > 1: the same bytes for the same S, K)
GET  /healthz, GET /stats, GET / (a page to try it)

Each endpoint serves the loaded generator that takes its input (`ENDPOINTS`): photos at /stylize, seeds at
/generate, whatever the model kind; the checkpoints say which kinds are loaded. Size policy: like the batch
jobs, an upload is centre-cropped to a square and resized to 256x256. Checkpoints and limits are one typed
`ServeConfig`: the deployment's user_config (so `serve deploy` with a new checkpoint reconfigures replicas in
place, without dropping requests) or the app builder's arguments.
"""
import asyncio
import contextlib
import io
import zipfile
from collections import Counter

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import BackpressureConfig

from gan.batch.submission import zip_entry
from gan.checkpoint import CheckpointError, from_bytes
from gan.io.images import IMAGE_SIZE, BadImageError, decode_image, encode_jpeg
from gan.io.storage import StorageError, read_uri
from gan.models.inference import Photos, Seeds, to_numpy
from gan.models.registry import get_model
from serve.page import PAGE

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/jpg")
MAX_COUNT = 64
MAX_SEED = 2 ** 63 - 1

api = FastAPI(title="gan-art", docs_url=None, redoc_url=None)


class ServeConfig(BaseModel):
    """A replica's settings: `user_config` in serve/config.yaml, or `serve run serve.app:build_app KEY=VALUE ...`."""
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None          # a generator: local path or s3://bucket/key (its kind picks the endpoint)
    checkpoints: list[str] = []            # more generators, at most one per endpoint
    max_batch_size: int = Field(8, ge=1)   # requests stylized together; max_ongoing_requests must be >= this
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    # Overload: a replica holds at most max_batch_size + max_queued_requests requests at once (so at most that many
    # uploads in memory); one more is answered 503 with Retry-After at once, before its body is read.
    max_queued_requests: int = Field(32, ge=0)
    retry_after_s: int = Field(1, ge=0)
    upload_timeout_s: float = Field(30.0, gt=0)  # a body that takes longer to arrive is refused (408): slow clients
    torch_threads: int | None = Field(None, ge=1)


DEFAULTS = ServeConfig()
ENDPOINTS = {Photos: "stylize", Seeds: "generate"}  # what each input is served at: POST /stylize, POST /generate


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers


@api.exception_handler(HTTPError)
async def _http_error(_: Request, e: HTTPError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


@api.exception_handler(RequestValidationError)
async def _bad_parameter(_: Request, e: RequestValidationError) -> JSONResponse:  # e.g. ?seed=abc
    where = "; ".join(f"{'.'.join(str(x) for x in err['loc'][1:])}: {err['msg']}" for err in e.errors())
    return JSONResponse({"error": f"bad request parameter ({where})"}, status_code=400)


@api.exception_handler(Exception)
async def _internal_error(_: Request, e: Exception) -> JSONResponse:  # never a stack trace to the client
    return JSONResponse({"error": "internal error"}, status_code=500)


async def _parse_multipart(body: bytes, content_type: str) -> tuple[bytes, str, str] | None:
    """The 'file' field of a multipart body (already size-checked), via Starlette's parser."""
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    async def stream():
        yield body

    parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_part_size=len(body) + 1)
    try:
        form = await parser.parse()
    except Exception:  # noqa: BLE001 - malformed multipart
        raise HTTPError(400, "malformed multipart body") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        return None
    data = await upload.read()
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    return data, upload.filename or "upload", ctype


# max_ongoing_requests >= max_batch_size + max_queued_requests: the router hands a replica every request it may
# hold, and the replica refuses the rest itself (503 JSON, Retry-After); the router's own queue (max_queued_requests
# here, answered by Serve's proxy with 503 and Retry-After too) is the backstop while replicas are starting.
@serve.deployment(max_ongoing_requests=64, max_queued_requests=64,
                  backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
                  autoscaling_config={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 16})
@serve.ingress(api)
class GanServer:
    def __init__(self):  # FastAPI reads the real annotations, so no `from __future__ import annotations` here
        import torch
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models: dict[type, tuple] = {}  # input type -> (kind, generator, its infer)
        self.load_errors: list[str] = []     # checkpoints that could not be loaded, and why
        self.limits = DEFAULTS
        self.max_upload_bytes = DEFAULTS.max_upload_bytes
        self.batch_sizes: Counter[int] = Counter()
        self.admitted = 0                 # requests inside this replica now (being read, waiting, in a batch)
        self.peak_admitted = 0
        self.shed = Counter()             # refused with 503 (overload), 408 (slow upload), 499 (client left)

    def reconfigure(self, user_config: dict) -> None:
        """Apply a ServeConfig: load the generators, set limits and batching (in place, replicas stay up)."""
        config = ServeConfig(**user_config)
        models: dict[type, tuple] = {}
        errors: list[str] = []
        for uri in [config.checkpoint] * bool(config.checkpoint) + config.checkpoints:
            try:  # a damaged or missing file: the replica stays up, its endpoint answers 503 with the reason
                ckpt = from_bytes(read_uri(uri), uri)
            except (CheckpointError, StorageError) as e:
                errors.append(str(e))
                continue
            infer = get_model(ckpt.kind).infer
            if infer.takes in models:
                raise ValueError(f"{uri}: a second generator that takes {infer.takes.noun} "
                                 f"(/{ENDPOINTS[infer.takes]} serves one)")
            models[infer.takes] = (ckpt.kind, ckpt.build(self.device), infer)
        self.models, self.load_errors = models, errors
        if config.torch_threads:
            self.torch.set_num_threads(config.torch_threads)
        self.max_upload_bytes, self.limits = config.max_upload_bytes, config
        self.peak_admitted = self.admitted  # /stats' peak: since the settings it was reached under
        self.stylize_batch.set_max_batch_size(config.max_batch_size)
        self.stylize_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    # --- model calls ----------------------------------------------------------------------------

    def _model(self, takes: type) -> tuple:
        if takes not in self.models:
            why = "; ".join(self.load_errors) or "set checkpoint or checkpoints"
            raise HTTPError(503, f"no generator that takes {takes.noun} is loaded ({why})")
        return self.models[takes]

    def _infer_photos(self, pixels: np.ndarray) -> np.ndarray:
        _, net, infer = self._model(Photos)
        return to_numpy(infer(net, Photos.from_numpy(pixels, self.device)))

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s)
    async def stylize_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Requests that arrive together go through the generator as one batch."""
        self.batch_sizes[len(images)] += 1
        return list(await asyncio.to_thread(self._infer_photos, np.stack(images)))

    # --- HTTP ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admitted(self):
        """Hold one of the replica's places for a request, or refuse it at once (503, Retry-After) when all are
        taken; freed however the request ends (answered, failed, timed out, client gone)."""
        limit = self.limits.max_batch_size + self.limits.max_queued_requests
        if self.admitted >= limit:
            self.shed[503] += 1
            raise HTTPError(503, f"overloaded: {self.admitted} requests in progress on this replica (its limit is "
                                 f"{limit}); retry after {self.limits.retry_after_s} s",
                            {"Retry-After": str(self.limits.retry_after_s)})
        self.admitted += 1
        self.peak_admitted = max(self.peak_admitted, self.admitted)
        try:
            yield
        finally:
            self.admitted -= 1

    async def _read_upload(self, request: Request) -> tuple[bytes, str]:
        """The image bytes and their name, refusing bodies over the limit before reading them all, and bodies that
        take longer than upload_timeout_s to arrive."""
        try:
            return await asyncio.wait_for(self._read_body(request), self.limits.upload_timeout_s)
        except asyncio.TimeoutError:
            self.shed[408] += 1
            raise HTTPError(408, f"the upload did not arrive within {self.limits.upload_timeout_s:g} s") from None
        except ClientDisconnect:
            self.shed[499] += 1
            raise HTTPError(499, "the client went away during the upload") from None

    async def _read_body(self, request: Request) -> tuple[bytes, str]:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_upload_bytes:
            raise HTTPError(413, f"upload is {length} bytes; the limit is {self.max_upload_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_upload_bytes:
                raise HTTPError(413, f"upload is over the {self.max_upload_bytes}-byte limit")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await _parse_multipart(bytes(body), request.headers["content-type"])
            if form is None:
                raise HTTPError(400, "multipart upload needs a file field named 'file'")
            data, name, ctype = form
        else:
            data, name = bytes(body), "upload"
        if ctype not in IMAGE_TYPES and ctype not in ("application/octet-stream", ""):
            raise HTTPError(415, f"unsupported content type {ctype!r}; send JPEG, PNG or WebP")
        return data, name

    @api.post("/stylize")
    async def stylize(self, request: Request) -> Response:
        self._model(Photos)
        async with self._admitted():
            data, name = await self._read_upload(request)
            try:  # in a worker thread: a large image must not hold up other requests (/healthz included)
                pixels = await asyncio.to_thread(decode_image, data, name, IMAGE_SIZE)
            except BadImageError as e:
                raise HTTPError(400, e.reason) from None
            del data  # the upload's bytes: only the pixels are kept while the request waits for its batch
            out = await self.stylize_batch(pixels)
        return Response(encode_jpeg(out), media_type="image/jpeg")

    @api.post("/generate")
    async def generate(self, seed: int = 0, count: int = 1) -> Response:
        _, net, infer = self._model(Seeds)
        if not 1 <= count <= MAX_COUNT:
            raise HTTPError(400, f"count must be 1 to {MAX_COUNT}")
        if not 0 <= seed <= MAX_SEED:
            raise HTTPError(400, f"seed must be 0 to {MAX_SEED}")
        async with self._admitted():
            images = to_numpy(await asyncio.to_thread(infer, net, Seeds(seed, tuple(range(count)))))
        if count == 1:
            return Response(encode_jpeg(images[0]), media_type="image/jpeg")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for i, img in enumerate(images):
                zf.writestr(zip_entry(f"{seed}-{i:03d}.jpg"), encode_jpeg(img))
        return Response(buf.getvalue(), media_type="application/zip")

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", **{endpoint: takes in self.models for takes, endpoint in ENDPOINTS.items()}}

    @api.get("/stats")
    async def stats(self) -> dict:
        import resource
        return {"models": {ENDPOINTS[takes]: kind for takes, (kind, _, _) in self.models.items()},
                "in_progress": self.admitted, "peak_in_progress": self.peak_admitted,
                "refused": {str(k): v for k, v in sorted(self.shed.items())},
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "batches": sum(self.batch_sizes.values()),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_seen": max(self.batch_sizes, default=0), "torch_threads": self.torch.get_num_threads()}

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return PAGE


def build_app(args: ServeConfig) -> serve.Application:
    """`serve run serve.app:build_app checkpoint=g.pt`: the app with these settings as its user_config."""
    return GanServer.options(user_config=args.model_dump()).bind()


app = GanServer.options(user_config=DEFAULTS.model_dump()).bind()
