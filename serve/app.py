"""Ray Serve app: stylize a photo or draw DCGAN samples over HTTP, with request batching on each replica.

serve run serve/config.yaml            (or: serve run serve.app:build_app checkpoint=g.pt, or python -m serve)
POST /stylize    raw image body or multipart field "file" (JPEG/PNG/WebP, any size or mode) -> 256x256 JPEG
POST /generate?seed=S&count=K  -> K DCGAN samples (one JPEG, or a zip when K > 1: the same bytes for the same S, K)
GET  /healthz, GET /stats, GET / (a page to try it)

Size policy: like the batch jobs, the input is centre-cropped to a square and resized to 256x256.
Checkpoints and limits are one typed `ServeConfig`: the deployment's user_config (so `serve deploy` with a new
checkpoint reconfigures replicas in place, without dropping requests) or the app builder's arguments.
"""
import asyncio
import io
import zipfile
from collections import Counter

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from gan.checkpoint import from_bytes
from gan.io.images import IMAGE_SIZE, BadImageError, decode_image, encode_jpeg
from gan.batch.inference import sample_pixels, stylize_pixels
from gan.batch.submission import zip_entry
from gan.io.storage import read_uri
from serve.page import PAGE

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/jpg")
MAX_COUNT = 64
MAX_SEED = 2 ** 63 - 1

api = FastAPI(title="gan-art", docs_url=None, redoc_url=None)


class ServeConfig(BaseModel):
    """A replica's settings: `user_config` in serve/config.yaml, or `serve run serve.app:build_app KEY=VALUE ...`."""
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None          # CycleGAN generator for /stylize: local path or s3://bucket/key
    dcgan_checkpoint: str | None = None    # DCGAN generator for /generate
    max_batch_size: int = Field(8, ge=1)   # requests stylized together; max_ongoing_requests must be >= this
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    torch_threads: int | None = Field(None, ge=1)


DEFAULTS = ServeConfig()


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


@api.exception_handler(HTTPError)
async def _http_error(_: Request, e: HTTPError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status)


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


@serve.deployment(max_ongoing_requests=64,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 16})
@serve.ingress(api)
class GanServer:
    def __init__(self):  # FastAPI reads the real annotations, so no `from __future__ import annotations` here
        import torch
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.stylizer = self.sampler = None
        self.nz = 100
        self.max_upload_bytes = DEFAULTS.max_upload_bytes
        self.batch_sizes: Counter[int] = Counter()

    def reconfigure(self, user_config: dict) -> None:
        """Apply a ServeConfig: load the generators, set limits and batching (in place, replicas stay up)."""
        config = ServeConfig(**user_config)

        def load(uri: str | None, kind: str):
            if not uri:
                return None
            ckpt = from_bytes(read_uri(uri), uri, expect_kind=kind)
            return ckpt, ckpt.build(self.device)
        stylizer = load(config.checkpoint, "cyclegan")
        sampler = load(config.dcgan_checkpoint, "dcgan")
        self.stylizer = stylizer[1] if stylizer else None
        if sampler:
            self.sampler, self.nz = sampler[1], int(sampler[0].config["nz"])
        else:
            self.sampler = None
        if config.torch_threads:
            self.torch.set_num_threads(config.torch_threads)
        self.max_upload_bytes = config.max_upload_bytes
        self.stylize_batch.set_max_batch_size(config.max_batch_size)
        self.stylize_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    # --- model calls ----------------------------------------------------------------------------

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s)
    async def stylize_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Requests that arrive together go through the generator as one batch."""
        self.batch_sizes[len(images)] += 1
        return list(await asyncio.to_thread(stylize_pixels, self.stylizer, np.stack(images), self.device))

    # --- HTTP ---------------------------------------------------------------------------------

    async def _read_upload(self, request: Request) -> tuple[bytes, str]:
        """The image bytes and their name, refusing bodies over the limit before reading them all."""
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
        if self.stylizer is None:
            raise HTTPError(503, "no CycleGAN checkpoint is configured")
        data, name = await self._read_upload(request)
        try:  # in a worker thread: a large image must not hold up other requests (/healthz included)
            pixels = await asyncio.to_thread(decode_image, data, name, IMAGE_SIZE)
        except BadImageError as e:
            raise HTTPError(400, e.reason) from None
        out = await self.stylize_batch(pixels)
        return Response(encode_jpeg(out), media_type="image/jpeg")

    @api.post("/generate")
    async def generate(self, seed: int = 0, count: int = 1) -> Response:
        if self.sampler is None:
            raise HTTPError(503, "no DCGAN checkpoint is configured")
        if not 1 <= count <= MAX_COUNT:
            raise HTTPError(400, f"count must be 1 to {MAX_COUNT}")
        if not 0 <= seed <= MAX_SEED:
            raise HTTPError(400, f"seed must be 0 to {MAX_SEED}")
        images = await asyncio.to_thread(sample_pixels, self.sampler, seed, range(count), self.nz, self.device)
        if count == 1:
            return Response(encode_jpeg(images[0]), media_type="image/jpeg")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for i, img in enumerate(images):
                zf.writestr(zip_entry(f"{seed}-{i:03d}.jpg"), encode_jpeg(img))
        return Response(buf.getvalue(), media_type="application/zip")

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "stylize": self.stylizer is not None, "generate": self.sampler is not None}

    @api.get("/stats")
    async def stats(self) -> dict:
        return {"batches": sum(self.batch_sizes.values()),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_seen": max(self.batch_sizes, default=0), "torch_threads": self.torch.get_num_threads()}

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return PAGE


def build_app(args: ServeConfig) -> serve.Application:
    """`serve run serve.app:build_app checkpoint=g.pt`: the app with these settings as its user_config."""
    return GanServer.options(user_config=args.model_dump()).bind()


app = GanServer.options(user_config=DEFAULTS.model_dump()).bind()
