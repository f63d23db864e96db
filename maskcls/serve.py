"""``maskcls serve``: the detect pipeline behind an HTTP API and one web page (FastAPI on uvicorn).

``POST /v1/detect`` takes one or more photos (multipart, field ``files``) and answers, per photo, every face
as ``maskcls detect`` rows it: both go through ``FaceChecker.rows``, so the fields and their meaning are the
same. ``GET /v1/models`` lists the runs served (and the bundle's version when its specialists answer),
``GET /healthz`` says the server is up, ``GET /`` is the page (``maskcls/static/index.html``, read once at
start), ``/docs`` FastAPI's OpenAPI page.

Uploads stay in memory (Starlette's spooled files are told never to roll over to disk) and are bounded: the
body by ``max_upload_mb`` (counted as it streams in, whatever Content-Length claims), the count by
``max_files``, each image by ``max_megapixels``, read from its header before it is decoded (a small PNG can
claim 50k x 50k pixels). A bad request gets a 4xx JSON ``{"detail": "..."}`` naming what is wrong; a file name
from a request is only ever echoed back, never opened. The models run one request at a time under a lock:
torch and onnxruntime already spread a batch over the cores, and MTCNN and the classifiers are not meant to be
called from several threads at once; decoding the uploads happens before the lock, in parallel.
"""
from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from typing import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartException, MultiPartParser

from . import __version__
from .data.crop import file_hash
from .data.images import open_rgb
from .data.layout import DataError
from .detect import MAX_MEGAPIXELS, FaceChecker, ImageTooLarge, check_pixels, face_records
from .infer import checkpoint_file

FIELD = "files"  # the multipart field that carries the photos
DEFAULT_HOST = "127.0.0.1"  # loopback: the server is reachable from other machines only when asked (--host)


@dataclass(frozen=True)
class ServeLimits:
    max_upload_mb: float = 20.0  # the whole request body, in MiB
    max_files: int = 16  # photos per request
    max_megapixels: float = MAX_MEGAPIXELS  # per photo, from its header

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2 ** 20)


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# --- reading a request ------------------------------------------------------------------------------

class MemoryMultiPartParser(MultiPartParser):
    """Starlette's multipart parser with its files held in memory, however large (the body's size is bounded
    before it reaches the parser)."""

    spool_max_size = sys.maxsize  # SpooledTemporaryFile: roll over to a disk file past this many bytes


async def _bounded(stream: AsyncIterator[bytes], max_bytes: int, max_mb: float) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise BadRequest(413, f"upload larger than {max_mb:g} MB (--max-upload-mb)")
        yield chunk


async def read_uploads(request: Request, limits: ServeLimits) -> list[Upload]:
    """The photos of a multipart request, in order; a BadRequest for anything else."""
    kind, _ = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise BadRequest(415, f"send photos as multipart/form-data in the field '{FIELD}' "
                              f"(got Content-Type {kind.decode('latin-1') or 'none'})")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_upload_bytes:
        raise BadRequest(413, f"upload larger than {limits.max_upload_mb:g} MB (--max-upload-mb)")
    stream = _bounded(request.stream(), limits.max_upload_bytes, limits.max_upload_mb)
    parser = MemoryMultiPartParser(request.headers, stream, max_files=limits.max_files, max_fields=limits.max_files)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        status = 413 if err.message.startswith("Too many files") else 400
        raise BadRequest(status, f"upload: {err.message}") from None
    uploads = []
    for field, value in form.multi_items():
        if field != FIELD:
            raise BadRequest(422, f"field '{field}': unexpected; send photos in the field '{FIELD}'")
        if isinstance(value, str):
            raise BadRequest(422, f"field '{FIELD}': holds text, not a file")
        value.file.seek(0)
        uploads.append(Upload(value.filename or f"photo{len(uploads) + 1}", value.file.read()))
    if not uploads:
        raise BadRequest(422, f"no photo uploaded: send one or more files in the field '{FIELD}'")
    return uploads


def decode_upload(upload: Upload, max_megapixels: float) -> Image.Image:
    """The upload as ``maskcls detect`` reads a file (``open_rgb``), once its header shows a sane size."""
    if not upload.data:
        raise BadRequest(422, f"{upload.name}: empty file")
    try:
        with Image.open(BytesIO(upload.data)) as probe:  # reads the header only
            width, height = probe.size
    except Image.DecompressionBombError as err:
        raise BadRequest(413, f"{upload.name}: image too large ({err})") from None
    except UnidentifiedImageError:
        raise BadRequest(415, f"{upload.name}: not an image (PIL cannot identify it)") from None
    except Exception as err:  # PIL raises many types for bad headers
        raise BadRequest(422, f"{upload.name}: image header does not decode ({type(err).__name__}: {err})") from None
    try:
        check_pixels(upload.name, (width, height), max_megapixels)
    except ImageTooLarge as err:
        raise BadRequest(413, str(err)) from None
    try:
        return open_rgb(BytesIO(upload.data), upload.name)
    except DataError as err:
        raise BadRequest(422, str(err)) from None


# --- what the server answers ------------------------------------------------------------------------

def served_models(checker: FaceChecker) -> list[dict]:
    """One entry per run: task, folder, backbone, image size, validation F1, the checkpoint's SHA-1 and whether
    it is the bundle's."""
    from .bundle import is_bundled
    from .checkpoint import load_checkpoint

    models = []
    for specialist in checker.specialists:
        for run in specialist.runs:
            path = checkpoint_file(run.run_dir, run.which)
            best_f1 = load_checkpoint(path).get("best_f1")
            models.append({"task": run.task, "run": str(run.run_dir), "checkpoint": path.name,
                           "backbone": run.config.backbone, "img_size": run.config.img_size,
                           "val_f1": None if best_f1 is None else round(float(best_f1), 4),
                           "sha1": file_hash(path), "bundled": is_bundled(run.run_dir)})
    return models


def photo_result(name: str, image: Image.Image, rows: Sequence[dict]) -> dict:
    """One photo's answer: its size and its faces (detect's rows less ``file`` and ``status``)."""
    return {"file": name, "width": image.width, "height": image.height, "faces": face_records(rows)}


class Service:
    """The loaded checker behind a lock: one request's photos go through the models at a time."""

    def __init__(self, checker: FaceChecker, limits: ServeLimits):
        self.checker, self.limits = checker, limits
        self.lock = threading.Lock()

    def detect(self, uploads: Sequence[Upload]) -> dict:
        images = [decode_upload(upload, self.limits.max_megapixels) for upload in uploads]
        with self.lock:
            rows = self.checker.rows([(upload.name, image) for upload, image in zip(uploads, images)])
        return {"photos": [photo_result(u.name, image, r) for u, image, r in zip(uploads, images, rows)]}


def page_html() -> str:
    return resources.files("maskcls").joinpath("static/index.html").read_text(encoding="utf-8")


# the multipart body, for /docs (the endpoint reads the stream itself, so FastAPI cannot infer it)
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": "One or more photos (JPEG, PNG, ...)."}}}}}}}


def create_app(checker: FaceChecker, limits: ServeLimits = ServeLimits()):
    """The FastAPI app serving ``checker`` (built once, with its models loaded)."""
    service = Service(checker, limits)
    models = served_models(checker)
    bundle = checker.bundle_version  # the bundle's version when its specialists answer
    page = page_html()
    settings = checker.settings
    app = FastAPI(title="maskcls", version=__version__,
                  description="Every face in a photo: mask, gender and age band (three specialists).")

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest):
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return page

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"models": models, "bundle": bundle, "engine": settings.runtime, "tta": settings.tta,
                "limits": {"max_upload_mb": limits.max_upload_mb, "max_files": limits.max_files,
                           "max_megapixels": limits.max_megapixels}}

    @app.post("/v1/detect", openapi_extra=UPLOAD_BODY)
    async def detect(request: Request) -> dict:
        """Every face of each photo: box, detection probability, mask / gender / age band with the chosen
        class's probability, the 18-class label and name (the fields of `maskcls detect`'s rows)."""
        uploads = await read_uploads(request, limits)
        return await run_in_threadpool(service.detect, uploads)

    return app


def serve(checker: FaceChecker, limits: ServeLimits = ServeLimits(), host: str = DEFAULT_HOST, port: int = 8000,
          announce=print) -> None:
    """Run the server until Ctrl-C or SIGTERM (uvicorn finishes the requests in flight, then returns)."""
    import uvicorn

    app = create_app(checker, limits)
    shown = f"[{host}]" if ":" in host else host
    announce(f"maskcls serve: http://{shown}:{port}/ (API docs: /docs); Ctrl-C to stop")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    # uvicorn raises the signal it stopped on again once it has shut down, under the handlers found at start:
    # by then the shutdown is done, so these swallow it (SIGINT would end in a KeyboardInterrupt traceback)
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = [signal.signal(stop, lambda signum, frame: None) for stop in stops]
    try:
        server.run()
    finally:
        for stop, handler in zip(stops, previous):
            signal.signal(stop, handler)
