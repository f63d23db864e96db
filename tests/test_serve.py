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
LIMITS = ServeLimits(max_upload_mb=1, max_files=3, max_megapixels=4, max_request_megapixels=6)


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
    answer = client.get("/v1/models")
    models = answer.json()
    assert [m["task"] for m in models["models"]] == list(SPECIALISTS)
    mask = models["models"][0]
    assert mask["run"] == "exp" and mask["backbone"] == "test_efficientnet"
    assert str(project) not in answer.text  # run names, never a path of the server's disk
    assert mask["img_size"] == 32 and mask["val_f1"] == 0.0 and len(mask["sha1"]) == 40
    assert models["engine"] == "torch" and models["limits"]["max_files"] == 3
    assert (models["detector"], models["min_prob"]) == ("retinaface", 0.5)
    assert models["limits"]["max_request_megapixels"] == LIMITS.max_request_megapixels
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
    "over max request megapixels": ("two large", 413, "request too large: 2 photo(s) of 7.2 megapixels in all as "
                                                      "decoded, over 6 (--max-request-megapixels)"),
    "format not accepted": ("bmp", 415, "pair.bmp: BMP images are not accepted; send JPEG, PNG, WebP"),
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
        bmp = io.BytesIO()
        Image.open(io.BytesIO(pair)).save(bmp, format="BMP")
        files = {"truncated": [("cut.png", pair[: len(pair) // 2])], "bomb": [("bomb.png", png_claiming(50_000, 50_000))],
                 "large": [("large.png", png_claiming(3000, 2000))], "bmp": [("pair.bmp", bmp.getvalue())],
                 "two large": [(f"large{i}.png", png_claiming(2000, 1800)) for i in range(2)]}[request]
        if request == "bomb":
            assert len(files[0][1]) < 512 * 1024  # small on the wire, 2.5 gigapixels once decoded
        request = dict(files=[("files", (name, data, "image/png")) for name, data in files])
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
    monkeypatch.setattr(maskcls.serve, "listen", lambda host, port: started.update(host=host, port=port) or "socket")
    monkeypatch.setattr(maskcls.serve, "serve", lambda checker, limits, sock, announce: started.update(
        sock=sock, limits=limits, engine=checker.settings.runtime, detectors=checker.detectors))
    result = run("serve", "--project", project, "--max-files", 5)
    assert result.exit_code == 0, result.output
    detectors = started.pop("detectors")
    assert started == {"host": "127.0.0.1", "port": 8000, "sock": "socket", "limits": ServeLimits(max_files=5),
                       "engine": "torch"}
    assert [type(d).__name__ for d in detectors] == ["RetinaFace"] and detectors[0].score_threshold == 0.5
    assert result.stderr == ""  # loopback: no warning


def test_the_cli_serves_with_mtcnn_and_its_options(project, monkeypatch):
    import maskcls.serve

    started = {}
    monkeypatch.setattr(maskcls.serve, "listen", lambda host, port: "socket")
    monkeypatch.setattr(maskcls.serve, "serve", lambda checker, limits, sock, announce: started.update(
        settings=checker.settings, detectors=checker.detectors))
    result = run("serve", "--project", project, "--detector", "mtcnn", "--min-prob", 0.8, "--min-face", 30,
                 "--no-second-pass", "--device", "cpu")
    assert result.exit_code == 0, result.output
    settings = started["settings"]
    assert (settings.detector, settings.score_threshold, settings.min_face_size) == ("mtcnn", 0.8, 30)
    assert [(type(d).__name__, d.min_face_size) for d in started["detectors"]] == [("MTCNN", 30)]  # one pass


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


# ------------------------------------------------------------------------------- bounded memory

def test_an_eps_upload_is_refused_before_any_decoder_runs(client, monkeypatch):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript started"))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n%%EndComments\nshowpage\n%%EOF\n"
    answer = client.post("/v1/detect", files=[("files", ("figure.eps", eps, "application/postscript"))])
    assert answer.status_code == 415 and answer.json()["detail"].startswith("figure.eps: EPS images are not accepted")


def test_a_request_decodes_under_the_lock_and_keeps_no_image(project, pair, monkeypatch):
    """One request's photos in memory at a time, none after its answer, and the heap trimmed after a large one."""
    import gc
    import weakref

    import maskcls.serve as serve_module
    from maskcls.serve import Service, Upload

    runs = {task: [project / task / "exp"] for task in SPECIALISTS}
    service = Service(FaceChecker.create(load_specialists(runs), SETTINGS), LIMITS)
    decoded, trimmed = [], []

    def spy(*args, **kwargs):
        photo = real_decode(*args, **kwargs)
        decoded.append((service.lock.locked(), weakref.ref(photo.image)))
        return photo

    real_decode = serve_module.decode_photo
    monkeypatch.setattr(serve_module, "decode_photo", spy)
    monkeypatch.setattr(serve_module, "release_memory", lambda: trimmed.append(True))
    monkeypatch.setattr(serve_module, "TRIM_MEGAPIXELS", 0.1)
    answer = service.detect([Upload("a.png", pair), Upload("b.png", pair)])
    assert [len(photo["faces"]) for photo in answer["photos"]] == [2, 2]
    gc.collect()
    assert [locked for locked, _ in decoded] == [True, True]
    assert all(image() is None for _, image in decoded)  # nothing of the request's images lingers
    assert trimmed == [True]


def test_release_memory_runs_here():
    from maskcls.serve import release_memory

    release_memory()  # glibc's malloc_trim on Linux, nothing elsewhere: never an error


def test_a_large_jpeg_is_answered_in_its_own_pixels(project, pair):
    """A JPEG over --max-side decodes at a reduced scale; the answer's size and boxes are the photo's own."""
    runs = {task: [project / task / "exp"] for task in SPECIALISTS}
    checker = FaceChecker.create(load_specialists(runs), DetectSettings(min_face_size=32, max_side=400))
    big = Image.open(io.BytesIO(pair)).resize((1600, 1000), Image.BICUBIC)  # decodes at 1/4: 400 x 250
    data = io.BytesIO()
    big.save(data, format="JPEG", quality=95)
    with TestClient(create_app(checker, ServeLimits(max_request_megapixels=0.2))) as client:
        answer = client.post("/v1/detect", files=[("files", ("big.jpg", data.getvalue(), "image/jpeg"))])
    assert answer.status_code == 200, answer.text  # 1.6 megapixels on the wire, 0.1 as decoded
    photo = answer.json()["photos"][0]
    assert (photo["width"], photo["height"]) == (1600, 1000) and len(photo["faces"]) == 2
    for face, offset in zip(photo["faces"], (0, 800)):  # each box on its half, in the photo's pixels
        assert offset <= face["x1"] < face["x2"] <= offset + 800 and face["x2"] - face["x1"] > 150


# ------------------------------------------------------------------------------- messages

def test_a_busy_port_fails_in_one_line_before_the_models_load_and_without_a_url(project, monkeypatch):
    import maskcls.detect

    monkeypatch.setattr(maskcls.detect, "load_specialists", lambda *a, **k: pytest.fail("the models loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--project", project, "--port", port)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1 port {port}: Address already in use (--host, --port)"
    assert "http://" not in result.output


def test_a_host_open_to_the_network_gets_a_one_line_warning(project, monkeypatch):
    import maskcls.serve

    started = {}
    monkeypatch.setattr(maskcls.serve, "serve", lambda checker, limits, sock, announce: started.update(
        address=sock.getsockname()) or sock.close())
    result = run("serve", "--project", project, "--host", "0.0.0.0", "--port", 0)
    assert result.exit_code == 0, result.output
    assert result.stderr == "warning: --host 0.0.0.0: the API has no authentication and is open to the network\n"
    assert started["address"][0] == "0.0.0.0" and started["address"][1] > 0  # port 0: a free one


@pytest.mark.parametrize("option, value, code, words", [
    ("--port", 70000, 1, "'--port': Input should be less than or equal to 65535"),
    ("--port", -1, 1, "'--port': Input should be greater than or equal to 0"),
    ("--max-upload-mb", -1, 1, "'--max-upload-mb': Input should be greater than or equal"),
    ("--max-upload-mb", 0, 1, "error: max_upload_mb must be above 0, got 0.0"),
    ("--max-files", 0, 1, "'--max-files': Input should be greater than or equal to 1"),
    ("--max-megapixels", 0, 1, "error: max_megapixels must be above 0"),
    ("--max-request-megapixels", -5, 1, "'--max-request-megapixels': Input should be greater than"),
])
def test_serve_options_out_of_range_are_refused_before_any_work(project, monkeypatch, option, value, code, words):
    import maskcls.serve

    monkeypatch.setattr(maskcls.serve, "listen", lambda *a: pytest.fail("bound a socket"))
    result = run("serve", "--project", project, option, value)
    assert result.exit_code == code and words in result.output, result.output


def test_run_names_are_the_folder_under_the_task_never_a_path(tmp_path):
    from maskcls.serve import run_name

    for folder in ("runs/age/ens/member0", "runs/mask/exp", "elsewhere/best_mask"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "runs/mask/exp/best.pt").write_bytes(b"")
    assert run_name(tmp_path / "runs/age/ens/member0", "age") == "ens/member0"
    assert run_name(tmp_path / "runs/mask/exp", "mask") == "exp"
    assert run_name(tmp_path / "runs/mask/exp/best.pt", "mask") == "exp"
    assert run_name(tmp_path / "elsewhere/best_mask", "mask") == "best_mask"
