"""maskcls serve: every endpoint on tiny runs through FastAPI's TestClient; /v1/detect answers what `maskcls detect`
writes for the same photo; each bad request gets a 4xx naming what is wrong and the next good one still works;
the server listens on loopback by default and stops cleanly on SIGTERM.

The runs are untrained (as in test_detect): the labels are arbitrary, the path from upload to row is the real one.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image
from test_detect import make_run, one_thread, portrait, quiet, run, side_by_side  # noqa: F401 (autouse fixtures)

from maskcls.detect import DetectSettings, FaceChecker, load_specialists
from maskcls.serve import ServeLimits, create_app
from maskcls.tasks import SPECIALISTS

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

SETTINGS = DetectSettings(min_face_size=32)  # faces are about 45 px wide (as detect's tests use --min-face 32)
LIMITS = ServeLimits(max_upload_mb=1, max_files=3, max_megapixels=4)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for task in SPECIALISTS:
        make_run(root, task)
    return root


@pytest.fixture(scope="module")
def client(project):
    runs = {task: [project / task / "exp"] for task in SPECIALISTS}
    checker = FaceChecker.create(load_specialists(runs), SETTINGS)
    with TestClient(create_app(checker, LIMITS)) as client:
        yield client


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pair() -> bytes:
    """Two copies of the portrait side by side (320 x 200 PNG): two faces."""
    return png_bytes(side_by_side(portrait()))


def post(client, *files, field="files"):
    return client.post("/v1/detect", files=[(field, (name, data, "image/png")) for name, data in files])


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: a few hundred kB that decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + the row's bits
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_detect_answers_every_face_as_maskcls_detect_writes_it(client, project, pair, tmp_path):
    photo, out = tmp_path / "pair.png", tmp_path / "faces.json"
    photo.write_bytes(pair)
    result = run("detect", photo, "--project", project, "--out", out, "--min-face", SETTINGS.min_face_size)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]

    answer = post(client, ("entrance.png", pair), ("again.png", pair))
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["photos"]
    assert (first["file"], first["width"], first["height"]) == ("entrance.png", 320, 200)
    expected = [{k: v for k, v in row.items() if k not in ("file", "status")} for row in rows]
    assert len(expected) == 2 and first["faces"] == expected  # the same fields, the same numbers
    assert second["file"] == "again.png" and second["faces"] == expected


def test_a_photo_without_a_face_gets_an_empty_list(client):
    answer = post(client, ("hall.png", png_bytes(Image.new("RGB", (240, 180), (128, 128, 128)))))
    assert answer.status_code == 200
    assert answer.json()["photos"] == [{"file": "hall.png", "width": 240, "height": 180, "faces": []}]


def test_models_healthz_page_and_docs(client, project):
    models = client.get("/v1/models").json()
    assert [m["task"] for m in models["models"]] == list(SPECIALISTS)
    mask = models["models"][0]
    assert mask["run"] == str(project / "mask" / "exp") and mask["backbone"] == "test_efficientnet"
    assert mask["img_size"] == 32 and mask["val_f1"] == 0.0 and len(mask["sha1"]) == 40
    assert models["engine"] == "torch" and models["limits"]["max_files"] == 3
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "getUserMedia" in page.text and 'fetch("v1/detect"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["items"]["format"] == "binary"


BAD_REQUESTS = {  # name: (request arguments, status, words the error must contain)
    "not an image": (dict(files=[("files", ("notes.png", b"shopping list: eggs", "image/png"))]), 415,
                     "notes.png: not an image"),
    "truncated image": ("truncated", 422, "cut.png: image does not decode"),
    "empty upload": (dict(files=[("files", ("empty.png", b"", "image/png"))]), 422, "empty.png: empty file"),
    "no file at all": (dict(content=b"--b--\r\n", headers={"content-type": "multipart/form-data; boundary=b"}), 422,
                       "no photo uploaded"),
    "too many files": (dict(files=[("files", (f"p{i}.png", b"x", "image/png")) for i in range(4)]), 413,
                       "Too many files"),
    "over max upload": (dict(files=[("files", ("big.png", b"\0" * (2 ** 20 + 1), "image/png"))]), 413,
                        "larger than 1 MB"),
    "decompression bomb": ("bomb", 413, "bomb.png: image too large"),
    "over max megapixels": ("large", 413, "large.png: image too large (3000 x 2000 pixels"),
    "wrong field name": (dict(files=[("image", ("pair.png", b"", "image/png"))]), 422,
                         "field 'image': unexpected; send photos in the field 'files'"),
    "text in the field": (dict(files=[("files", ("pair.png", b"", "image/png"))], data={"files": "hello"}), 422,
                          "holds text"),
    "not multipart": (dict(content=b"raw bytes", headers={"content-type": "image/jpeg"}), 415, "multipart/form-data"),
    "broken multipart": (dict(content=b"--b\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--b--\r\n",
                              headers={"content-type": "multipart/form-data; boundary=b"}), 400, "upload: "),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_naming_what_is_wrong_and_the_next_good_one_works(client, pair, case):
    request, status, words = BAD_REQUESTS[case]
    if isinstance(request, str):
        data = {"truncated": pair[: len(pair) // 2], "bomb": png_claiming(50_000, 50_000),
                "large": png_claiming(3000, 2000)}[request]
        name = {"truncated": "cut.png", "bomb": "bomb.png", "large": "large.png"}[request]
        if request == "bomb":
            assert len(data) < 512 * 1024  # small on the wire, 2.5 gigapixels once decoded
        request = dict(files=[("files", (name, data, "image/png"))])
    answer = client.post("/v1/detect", **request)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    good = post(client, ("pair.png", pair))
    assert good.status_code == 200 and len(good.json()["photos"][0]["faces"]) == 2


def test_an_oversized_body_is_refused_while_it_streams_whatever_its_length_header_says(client):
    def chunks():  # no Content-Length: the size is only known by counting
        for _ in range(3):
            yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n" + b"\0" * 2 ** 19

    answer = client.post("/v1/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413 and "larger than 1 MB" in answer.json()["detail"]


def test_nothing_is_written_to_disk_per_request(project, pair, monkeypatch):
    import tempfile

    def no_disk(*args, **kwargs):
        raise AssertionError("a request made a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    runs = {task: [project / task / "exp"] for task in SPECIALISTS}
    app = create_app(FaceChecker.create(load_specialists(runs), SETTINGS), ServeLimits(max_upload_mb=4))
    with TestClient(app) as client:
        big = b"\xff" * (3 * 2 ** 20)  # past Starlette's 1 MB spool, which rolls over to a temporary file
        answer = client.post("/v1/detect", files=[("files", ("pair.png", pair, "image/png")),
                                                  ("files", ("big.bin", big, "application/octet-stream"))])
        assert answer.status_code == 415 and "big.bin: not an image" in answer.json()["detail"]
        assert client.post("/v1/detect", files=[("files", ("pair.png", pair, "image/png"))]).status_code == 200


def test_the_cli_serves_on_loopback_by_default(project, monkeypatch):
    import maskcls.serve

    started = {}
    monkeypatch.setattr(maskcls.serve, "serve", lambda checker, limits, host, port, announce: started.update(
        host=host, port=port, limits=limits, engine=checker.settings.runtime))
    result = run("serve", "--project", project, "--max-files", 5)
    assert result.exit_code == 0, result.output
    assert started == {"host": "127.0.0.1", "port": 8000, "limits": ServeLimits(max_files=5), "engine": "torch"}


def test_the_server_answers_on_loopback_and_stops_cleanly_on_sigterm(project):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "maskcls", "serve", "--project", str(project), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output and "Finished server process" in output
