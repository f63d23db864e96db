"""``maskcls serve``: the detect pipeline behind an HTTP API and one web page (FastAPI on uvicorn).

``POST /v1/detect`` takes one or more photos (multipart, field ``files``) and answers, per photo, every face
as ``maskcls detect`` rows it: both go through ``FaceChecker.rows``, so the fields and their meaning are the
same. ``GET /v1/models`` lists the runs served (and the bundle's version when its specialists answer),
``GET /healthz`` says the server is up, ``GET /`` is the page (``maskcls/static/index.html``, read once at
start), ``/docs`` FastAPI's OpenAPI page.

Uploads stay in memory (Starlette's spooled files are told never to roll over to disk) and are bounded: the
body by ``max_upload_mb`` (counted as it streams in, whatever Content-Length claims), the count by
``max_files``; each image's format (ACCEPTED_FORMATS, else 415) and pixels (``max_megapixels``) and the
request's pixels as decoded (``max_request_megapixels``) are read from the headers before anything is decoded
(a 125 kB PNG can claim 40 megapixels, 160 MB once decoded). A bad request gets a 4xx JSON
``{"detail": "..."}`` naming what is wrong; a file name from a request is only ever echoed back, never opened.

One request at a time decodes its photos and runs them through the models, under a lock: the decoded pixels in
memory are one request's (torch and onnxruntime already spread a batch over the cores, and the detector and the
classifiers are not meant to be called from several threads at once). A JPEG larger than the detector needs is
decoded at 1/2, 1/4 or 1/8 scale (``DetectSettings.max_side``), as ``maskcls detect`` decodes it. The decoded
photos are dropped when the models are done, and after a large request glibc is told to hand the freed pages
back (it keeps them otherwise).
"""
from __future__ import annotations

import ctypes
import ipaddress
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartException, MultiPartParser

from . import __version__
from .data.crop import file_hash
from .data.images import ACCEPTED_FORMATS as READ_FORMATS
from .data.layout import DataError
from .detect import (BATCH_MEGAPIXELS, MAX_MEGAPIXELS, FaceChecker, ImageTooLarge, Photo, PhotoHeader,
                     check_pixels, decode_photo, face_records, photo_header)
from .errors import ConfigError
from .infer import checkpoint_file

FIELD = "files"  # the multipart field that carries the photos
DEFAULT_HOST = "127.0.0.1"  # loopback: the server is reachable from other machines only when asked (--host)
# the formats served, by PIL's name (MPO: a phone's JPEG with a second picture); any other gets a 415 before a
# decoder runs (Pillow would start Ghostscript for an EPS)
# open_rgb's formats by the name an image's header gives (a phone's JPEG says MPO), as the page names them
ACCEPTED_FORMATS = {**{name: {"WEBP": "WebP"}.get(name, name) for name in READ_FORMATS}, "MPO": "JPEG"}
TRIM_MEGAPIXELS = 10.0  # a request that decoded more (40 MB of RGB) hands its freed memory back to the system


@dataclass(frozen=True)
class ServeLimits:
    max_upload_mb: float = 20.0  # the whole request body, in MiB
    max_files: int = 16  # photos per request
    max_megapixels: float = MAX_MEGAPIXELS  # per photo, from its header
    # per request, as decoded (a large JPEG decodes smaller): detect's batch, 400 MB of RGB
    max_request_megapixels: float = BATCH_MEGAPIXELS

    def __post_init__(self):
        for key in ("max_upload_mb", "max_megapixels", "max_request_megapixels"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be above 0, got {getattr(self, key)}")
        if self.max_files < 1:
            raise ConfigError(f"max_files must be 1 or more, got {self.max_files}")

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


def check_upload(upload: Upload, max_megapixels: float, max_side: int) -> PhotoHeader:
    """The upload's header, once it shows an accepted format and a sane size; nothing decoded."""
    if not upload.data:
        raise BadRequest(422, f"{upload.name}: empty file")
    try:
        with Image.open(BytesIO(upload.data)) as probe:  # reads the header only
            header = photo_header(probe, max_side)
    except Image.DecompressionBombError as err:
        raise BadRequest(413, f"{upload.name}: image too large ({err})") from None
    except UnidentifiedImageError:
        raise BadRequest(415, f"{upload.name}: not an image (PIL cannot identify it)") from None
    except Exception as err:  # PIL raises many types for bad headers
        raise BadRequest(422, f"{upload.name}: image header does not decode ({type(err).__name__}: {err})") from None
    if header.format not in ACCEPTED_FORMATS:
        raise BadRequest(415, f"{upload.name}: {header.format} images are not accepted; send "
                              f"{', '.join(dict.fromkeys(ACCEPTED_FORMATS.values()))}")
    try:
        check_pixels(upload.name, header.size, max_megapixels)
    except ImageTooLarge as err:
        raise BadRequest(413, str(err)) from None
    return header


def check_request(uploads: Sequence[Upload], limits: ServeLimits, max_side: int) -> list[PhotoHeader]:
    """Each upload's header (:func:`check_upload`), once their pixels as decoded fit ``max_request_megapixels``."""
    headers = [check_upload(upload, limits.max_megapixels, max_side) for upload in uploads]
    pixels = sum(header.decoded_pixels for header in headers)
    if pixels > limits.max_request_megapixels * 1e6:
        raise BadRequest(413, f"request too large: {len(uploads)} photo(s) of {pixels / 1e6:.1f} megapixels in all "
                              f"as decoded, over {limits.max_request_megapixels:g} (--max-request-megapixels); "
                              f"send fewer per request")
    return headers


def decode_upload(upload: Upload, header: PhotoHeader, max_side: int) -> Photo:
    """The upload as ``maskcls detect`` reads a file, its header checked (:func:`check_upload`)."""
    try:
        return decode_photo(BytesIO(upload.data), upload.name, header, max_side)
    except DataError as err:
        raise BadRequest(422, str(err)) from None


def release_memory() -> None:
    """Hand the heap's free pages back to the system: glibc keeps the freed blocks of decoded images in its
    arenas, resident, until it is asked (``malloc_trim``); other C libraries have no such call."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _libc():
    try:
        return ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    except OSError:
        return None


# --- what the server answers ------------------------------------------------------------------------

def run_name(run_dir: Path, task: str) -> str:
    """The run's folder under its task's folder (``runs/age/ens/member0`` -> ``ens/member0``), or its own name
    outside one: never a path of the server's disk."""
    folder = run_dir.resolve()
    parts = (folder if folder.is_dir() else folder.parent).parts  # a .pt file given as the run: its folder
    for depth in (1, 2):  # <task>/<name>, <task>/<name>/member<k> (or fold<k>)
        if len(parts) > depth + 1 and parts[-depth - 1] == task:
            return "/".join(parts[-depth:])
    return parts[-1]


def served_models(checker: FaceChecker) -> list[dict]:
    """One entry per run: task, run name, backbone, image size, validation F1, the checkpoint's SHA-1 and whether
    it is the bundle's."""
    from .bundle import is_bundled
    from .checkpoint import load_checkpoint

    models = []
    for specialist in checker.specialists:
        for run in specialist.runs:
            path = checkpoint_file(run.run_dir, run.which)
            best_f1 = load_checkpoint(path).get("best_f1")
            models.append({"task": run.task, "run": run_name(run.run_dir, run.task), "checkpoint": path.name,
                           "backbone": run.config.backbone, "img_size": run.config.img_size,
                           "val_f1": None if best_f1 is None else round(float(best_f1), 4),
                           "sha1": file_hash(path), "bundled": is_bundled(run.run_dir)})
    return models


def photo_result(name: str, size: tuple[int, int], rows: Sequence[dict]) -> dict:
    """One photo's answer: its size and its faces (detect's rows less ``file`` and ``status``)."""
    return {"file": name, "width": size[0], "height": size[1], "faces": face_records(rows)}


class Service:
    """The loaded checker behind a lock: one request's photos are decoded and go through the models at a time."""

    def __init__(self, checker: FaceChecker, limits: ServeLimits):
        self.checker, self.limits = checker, limits
        self.lock = threading.Lock()

    def detect(self, uploads: Sequence[Upload]) -> dict:
        max_side = self.checker.settings.max_side
        headers = check_request(uploads, self.limits, max_side)  # before the lock: a bad request waits for none
        with self.lock:
            sizes, rows = self._rows(uploads, headers, max_side)
        if sum(header.decoded_pixels for header in headers) > TRIM_MEGAPIXELS * 1e6:
            release_memory()
        return {"photos": [photo_result(u.name, size, r) for u, size, r in zip(uploads, sizes, rows)]}

    def _rows(self, uploads: Sequence[Upload], headers: Sequence[PhotoHeader], max_side: int):
        """Each photo's size and rows; its decoded image is dropped on return."""
        photos = [decode_upload(upload, header, max_side) for upload, header in zip(uploads, headers)]
        return [photo.size for photo in photos], self.checker.rows(photos)


def page_html() -> str:
    return resources.files("maskcls").joinpath("static/index.html").read_text(encoding="utf-8")


# the multipart body, for /docs (the endpoint reads the stream itself, so FastAPI cannot infer it)
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": "One or more photos: JPEG, PNG or WebP."}}}}}}}


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
                "detector": settings.detector, "min_prob": settings.score_threshold,
                "limits": {"max_upload_mb": limits.max_upload_mb, "max_files": limits.max_files,
                           "max_megapixels": limits.max_megapixels,
                           "max_request_megapixels": limits.max_request_megapixels}}

    @app.post("/v1/detect", openapi_extra=UPLOAD_BODY)
    async def detect(request: Request) -> dict:
        """Every face of each photo: box, detection probability, mask / gender / age band with the chosen
        class's probability, the 18-class label and name (the fields of `maskcls detect`'s rows)."""
        uploads = await read_uploads(request, limits)
        return await run_in_threadpool(service.detect, uploads)

    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host == "localhost"


def listen(host: str = DEFAULT_HOST, port: int = 8000) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port), or a ConfigError saying why not in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait for TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host} port {port}: {err.strerror or err} (--host, --port)") from None
    sock.set_inheritable(True)
    return sock


def serve(checker: FaceChecker, limits: ServeLimits = ServeLimits(), sock: socket.socket | None = None,
          announce=print) -> None:
    """Run the server on ``sock`` (from :func:`listen`; default: loopback port 8000) until Ctrl-C or SIGTERM
    (uvicorn finishes the requests in flight, then returns)."""
    import uvicorn

    sock = sock or listen()
    app = create_app(checker, limits)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    announce(f"maskcls serve: http://{shown}:{port}/ (API docs: /docs); Ctrl-C to stop")
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    # uvicorn raises the signal it stopped on again once it has shut down, under the handlers found at start:
    # by then the shutdown is done, so these swallow it (SIGINT would end in a KeyboardInterrupt traceback)
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = [signal.signal(stop, lambda signum, frame: None) for stop in stops]
    try:
        server.run(sockets=[sock])
    finally:
        for stop, handler in zip(stops, previous):
            signal.signal(stop, handler)
