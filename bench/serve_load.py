"""`maskcls serve` under load on loopback: requests/s, latency, errors and peak memory, against `maskcls detect` in
one process.

    python bench/serve_load.py [--mask RUN --age RUN --gender RUN] [--engines torch onnx] [--clients 4]
                               [--seconds 20] [--max-requests 5000] [--bad-share 0.2]

Without runs, each task's config is built untrained (weights change neither the speed nor the memory).

Photos come from ``../shared/data/faces`` eval images (skips cleanly when absent): one photo (one face), and
eight photos tiled 4 x 2 (eight faces, as bench/detect_group.py composes them), sent as JPEG. Per engine
(``--runtime onnx`` needs each run's best.onnx: maskcls export onnx), the server starts in a subprocess on
127.0.0.1 and gets, per photo, ``--clients`` threads (one httpx client each) posting for ``--seconds`` (at
most ``--max-requests``): first only good requests, then with ``--bad-share`` bad ones mixed in (not an image,
truncated, empty, a decompression bomb, a wrong field name, too many files, over --max-upload-mb, four
39-megapixel PNGs of 120 kB each: over --max-request-megapixels), which must get a 4xx, and the largest request
the limits let through (two such PNGs), which must get its 200, while every good one still gets its 200.
Latency percentiles are of the good requests. The server's resident memory (VmRSS) is read after a warm-up
(idle) and after each phase, its peak (VmHWM, reset after the warm-up) after the mixed phase: with the default
limits the peak stays within PEAK_ABOVE_IDLE_MB of idle.

The baseline is `maskcls detect`'s own path in this process (``detect_photos`` on a folder of copies of the
photo, batched as the command batches them, files read from disk, measured just before that photo's load
phases), same runs, engine and settings:
photos/s. The target is server photos/s with 4 clients >= 0.8 x that.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/serve_load.py`
from bench.detect_group import compose  # noqa: E402
from maskcls.detect import DetectSettings, detect_photos, load_specialists  # noqa: E402
from maskcls.tasks import SPECIALISTS  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
ROOT = Path(__file__).resolve().parents[1]
PEAK_ABOVE_IDLE_MB = 1536  # the bound on the server's peak resident memory above idle, under the default limits
HUGE = (7200, 5400)  # 38.9 megapixels: under serve's 40 per photo; 156 MB once decoded (Pillow's RGB: 4 bytes a pixel)


# --- the photos and the bad requests ----------------------------------------------------------------

def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_photos(data: Path) -> dict[str, bytes]:
    """'1 face': the first eval photo; '8 faces': the first eight tiled 4 x 2."""
    paths = sorted((data / "eval" / "images").glob("*.jpg"))[:8]
    group, _ = compose(paths, cols=4)
    return {"1 face": jpeg(Image.open(paths[0]).convert("RGB")), "8 faces": jpeg(group)}


def black_png(width: int, height: int, rgb: bool = False) -> bytes:
    """A PNG of black pixels, 1-bit grey or 8-bit RGB: 50k x 50k grey is about 300 kB that decode to 2.5
    gigapixels, 7200 x 5400 RGB about 120 kB that decode to 39 megapixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (3 * width if rgb else (width + 7) // 8))  # the filter byte, then the row's samples
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row * min(1000, height - start)) for start in range(0, height, 1000))
    header = struct.pack(">IIBBBBB", width, height, 8 if rgb else 1, 2 if rgb else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows + packer.flush())
            + chunk(b"IEND", b""))


def bad_requests(photo: bytes, max_files: int, max_upload_mb: float) -> dict[str, tuple[list, str]]:
    """name -> (the ``files`` argument of an httpx post, the answer it must get: '4xx', or '200' for the
    largest request the default limits let through)."""
    huge = black_png(*HUGE, rgb=True)
    return {
        "not an image": ([("files", ("notes.jpg", b"shopping list: eggs, milk", "image/jpeg"))], "4xx"),
        "truncated": ([("files", ("cut.jpg", photo[: len(photo) // 3], "image/jpeg"))], "4xx"),
        "empty": ([("files", ("empty.jpg", b"", "image/jpeg"))], "4xx"),
        "bomb": ([("files", ("bomb.png", black_png(50_000, 50_000), "image/png"))], "4xx"),
        "wrong field": ([("image", ("photo.jpg", photo, "image/jpeg"))], "4xx"),
        "too many files": ([("files", (f"p{i}.jpg", photo, "image/jpeg")) for i in range(max_files + 1)], "4xx"),
        "over max upload": ([("files", ("big.jpg", b"\xff" * int(max_upload_mb * 2 ** 20 + 1), "image/jpeg"))], "4xx"),
        "4 huge PNGs": ([("files", (f"huge{i}.png", huge, "image/png")) for i in range(4)], "4xx"),
        "2 huge PNGs": ([("files", (f"huge{i}.png", huge, "image/png")) for i in range(2)], "200"),
    }


def untrained_runs(folder: Path) -> dict[str, Path]:
    """Each specialist's task config built untrained and saved as `maskcls train` leaves a run."""
    import torch

    from maskcls.checkpoint import save_checkpoint
    from maskcls.config import load_config, save_config
    from maskcls.models import build_model, model_mean_std
    from maskcls.tasks import get_task

    runs = {}
    for task in SPECIALISTS:
        config = load_config(task, ["pretrained=none", f"project={folder}", "name=untrained"])
        torch.manual_seed(0)
        model = build_model(config)
        mean, std = model_mean_std(model)
        runs[task] = folder / task / "untrained"
        save_config(config, runs[task] / "config.yaml")
        save_checkpoint(runs[task] / "best.pt", model=model.state_dict(), config=config.to_dict(), epoch=0,
                        best_f1=0.0, class_names=list(get_task(task).class_names), mean=list(mean), std=list(std))
    return runs


# --- the server -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS), or its peak (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


class Server:
    """`maskcls serve` in a subprocess on loopback, its log in ``log``."""

    def __init__(self, runs: dict[str, Path], engine: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "maskcls", "serve", "--runtime", engine, "--port", str(self.port),
                   *[arg for task in SPECIALISTS for arg in (f"--{task}", str(runs[task]))]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.log = log
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=5).raise_for_status()
                return
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit(f"the server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def peak_mb(self) -> float:
        return rss_mb(self.process.pid, "VmHWM")

    def reset_peak(self) -> None:
        """VmHWM back to the present VmRSS (Linux: 5 into clear_refs), so the peak is the next phases'."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# --- load -------------------------------------------------------------------------------------------

@dataclass
class Load:
    seconds: float = 0.0
    good_ms: list[float] = field(default_factory=list)  # latency of each good request that got its 200
    bad_ok: int = 0  # bad requests answered as they must be (bad_requests)
    errors: list[str] = field(default_factory=list)  # good requests without a 200, bad ones answered otherwise

    def line(self, name: str, faces: int) -> dict:
        ms = np.array(self.good_ms) if self.good_ms else np.array([np.nan])
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return {"case": name, "good": len(self.good_ms), "bad": self.bad_ok, "errors": len(self.errors),
                "req_s": len(self.good_ms) / self.seconds, "p50": p50, "p95": p95, "p99": p99, "faces": faces}


def run_load(url: str, photo: bytes, faces: int, clients: int, seconds: float, max_requests: int,
             bad: dict[str, tuple[list, str]], bad_share: float, seed: int = 0) -> Load:
    """``clients`` threads posting until ``seconds`` pass (0: no time bound) or ``max_requests`` are sent."""
    load, lock = Load(), threading.Lock()
    sent = iter(range(max_requests))
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")  # 0: only the count bounds it
    names = list(bad)

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    if next(sent, None) is None:
                        return
                kind = rng.choice(names) if rng.random() < bad_share else None
                files = bad[kind][0] if kind else [("files", ("photo.jpg", photo, "image/jpeg"))]
                start = time.perf_counter()
                try:
                    answer = http.post("/v1/detect", files=files)
                    status, found = answer.status_code, None
                    if kind is None and status == 200:
                        found = len(answer.json()["photos"][0]["faces"])
                except httpx.HTTPError as err:
                    status, found = f"{type(err).__name__}: {err}", None
                elapsed_ms = (time.perf_counter() - start) * 1000
                with lock:
                    if kind is None and status == 200 and found == faces:
                        load.good_ms.append(elapsed_ms)
                    elif kind is not None and isinstance(status, int) and (
                            str(status) == bad[kind][1] or (bad[kind][1] == "4xx" and 400 <= status < 500)):
                        load.bad_ok += 1
                    else:
                        load.errors.append(f"{kind or 'good'}: {status}" + ("" if found is None else f", {found} faces"))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.seconds = time.monotonic() - start
    return load


def faces_in(url: str, photo: bytes) -> int:
    answer = httpx.post(f"{url}/v1/detect", files=[("files", ("photo.jpg", photo, "image/jpeg"))], timeout=120)
    answer.raise_for_status()
    return len(answer.json()["photos"][0]["faces"])


def detect_rate(runs: dict[str, Path], engine: str, photo: bytes, copies: int) -> float:
    """Photos/s of `maskcls detect`'s path (detect_photos) on ``copies`` files of ``photo``, after one warm-up."""
    specialists = load_specialists({task: [runs[task]] for task in SPECIALISTS}, runtime=engine)
    settings = DetectSettings(runtime=engine)
    with tempfile.TemporaryDirectory() as folder:
        for index in range(copies):
            (Path(folder) / f"{index:03d}.jpg").write_bytes(photo)
        detect_photos([Path(folder) / "000.jpg"], specialists, settings)  # warm-up: first calls allocate
        start = time.perf_counter()
        result = detect_photos([folder], specialists, settings)
        elapsed = time.perf_counter() - start
    assert result.photos == copies
    return copies / elapsed


# --- the table --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    for task in SPECIALISTS:
        parser.add_argument(f"--{task}", type=Path, help=f"{task} run folder (default: the task config, untrained)")
    parser.add_argument("--engines", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--max-requests", type=int, default=5000, help="per phase")
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--detect-copies", type=int, default=16,
                        help="photos for the in-process detect baseline (16: one of its batches)")
    args = parser.parse_args()
    if not (args.data / "eval" / "images").is_dir():
        print(f"skip: no {args.data / 'eval' / 'images'}")
        return
    photos = test_photos(args.data)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.clients} clients, "
          f"{args.seconds:g} s per phase (at most {args.max_requests} requests), {args.bad_share:.0%} bad when mixed")
    rows, problems = [], []
    with tempfile.TemporaryDirectory() as folder:
        runs = {task: getattr(args, task) for task in SPECIALISTS}
        if not all(runs.values()):
            runs = untrained_runs(Path(folder) / "runs")
            print("runs: each task's config, untrained")
        for engine in args.engines:
            server = Server(runs, engine, Path(folder) / f"serve_{engine}.log")
            try:
                for name, photo in photos.items():
                    # the baseline next to its load phases: on a shared machine the load changes by the minute
                    rate = detect_rate(runs, engine, photo, args.detect_copies)
                    print(f"{engine:5s} {name:7s} maskcls detect in one process: {rate:.2f} photos/s", flush=True)
                    faces = faces_in(server.url, photo)
                    bad = bad_requests(photo, max_files=16, max_upload_mb=20)
                    # warm-up at full concurrency: each thread's first requests grow its allocator arena
                    run_load(server.url, photo, faces, args.clients, 0, 2 * args.clients, bad, 0.0)
                    before = server.rss_mb()
                    server.reset_peak()
                    for share in (0.0, args.bad_share):
                        load = run_load(server.url, photo, faces, args.clients, args.seconds, args.max_requests, bad,
                                        share)
                        row = load.line(name, faces) | {"engine": engine, "bad_share": share, "rss_before": before,
                                                        "rss_after": server.rss_mb(), "peak": server.peak_mb(),
                                                        "detect": rate}
                        rows.append(row)
                        problems += [f"{engine} {name} {share:.0%} bad: {e}" for e in load.errors[:5]]
                        print(f"{engine:5s} {name:7s} bad {share:4.0%}: {row['req_s']:6.2f} req/s, p50 "
                              f"{row['p50']:.0f} ms, {row['good']} good, {row['bad']} refused, {row['errors']} errors, "
                              f"RSS {before:.0f} -> {row['rss_after']:.0f} MB, peak {row['peak']:.0f} MB "
                              f"({row['peak'] - before:+.0f} MB over idle)", flush=True)
            finally:
                code = server.stop()
                print(f"{engine}: server stopped on SIGTERM with exit code {code}")

    print("\n| engine | photo | bad requests | good req/s | p50 / p95 / p99 ms | errors | bad answered right | "
          "`maskcls detect` photos/s | ratio | server RSS idle -> after MB | peak over idle MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['case']} | {row['bad_share']:.0%} | {row['req_s']:.2f} | "
              f"{row['p50']:.0f} / {row['p95']:.0f} / {row['p99']:.0f} | {row['errors']} | {row['bad']} | "
              f"{row['detect']:.2f} | {row['req_s'] / row['detect']:.2f} | "
              f"{row['rss_before']:.0f} -> {row['rss_after']:.0f} ({row['rss_after'] / row['rss_before'] - 1:+.0%}) | "
              f"{row['peak'] - row['rss_before']:+.0f} |")
    worst = max(row["peak"] - row["rss_before"] for row in rows)
    print(f"\npeak resident memory over idle: {worst:+.0f} MB (bound {PEAK_ABOVE_IDLE_MB} MB): "
          f"{'within' if worst <= PEAK_ABOVE_IDLE_MB else 'OVER'}")
    for problem in problems:
        print("error:", problem)


if __name__ == "__main__":
    main()
