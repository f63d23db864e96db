"""The page of `maskcls serve` in a real browser: Debian's chromium, headless, driven by Selenium.

    apt-get install chromium chromium-driver; pip install selenium     # no browser is downloaded
    python bench/browser_check.py --mask RUN --age RUN --gender RUN [--photo PHOTO] [--out runs/browser_check]

Starts the server on loopback (as bench/serve_load.py does), opens the page in a fresh profile, checks that
the first Tab lands on the file chooser, uploads a photo with two faces (default: two eval photos of
``../shared/data/faces`` side by side), waits for the answer, and asserts that the canvas has two boxes drawn
(the pixels on each box's left edge are the mask's colour, at the boxes /v1/detect returns) and that the table
has two rows. Saves a desktop and a phone-width screenshot (PNG) into ``--out``: look at them.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/browser_check.py`
from bench.serve_load import DEFAULT_DATA, Server  # noqa: E402
from maskcls.detect import MASK_COLOURS  # noqa: E402
from maskcls.tasks import SPECIALISTS  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def two_faces(data: Path) -> bytes:
    """Two eval photos side by side, as JPEG."""
    paths = sorted((data / "eval" / "images").glob("*.jpg"))[:2]
    tiles = [Image.open(p).convert("RGB") for p in paths]
    canvas = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), (128, 128, 128))
    canvas.paste(tiles[0], (0, 0))
    canvas.paste(tiles[1], (tiles[0].width, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def browser(chromium: str, chromedriver: str, profile: str, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def check_page(driver, url: str, photo: Path, faces: list[dict], screenshot: Path) -> list[str]:
    """Upload ``photo`` on the page at ``url``; the failed checks (empty when all pass)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    failed = []
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "models").text)  # /v1/models answered
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    if driver.switch_to.active_element.get_attribute("id") != "drop":
        failed.append("the first Tab does not land on the file chooser")
    driver.find_element(By.ID, "files").send_keys(str(photo))
    WebDriverWait(driver, 300).until(ready.text_to_be_present_in_element((By.ID, "status"), "Done"))
    status = driver.find_element(By.ID, "status").text
    canvas = driver.find_element(By.CSS_SELECTOR, "article.photo canvas")
    boxes = canvas.get_attribute("data-boxes")
    rows = driver.find_elements(By.CSS_SELECTOR, "article.photo tbody tr")
    if boxes != "2" or len(rows) != 2:
        failed.append(f"expected 2 boxes and 2 table rows, got {boxes} boxes and {len(rows)} rows ({status})")
    for face in faces:  # the box's left edge, half-way down, in the canvas's own pixels
        x, y = face["x1"] + 1, (face["y1"] + face["y2"]) // 2
        pixel = driver.execute_script("return Array.from(arguments[0].getContext('2d')"
                                      ".getImageData(arguments[1], arguments[2], 1, 1).data.slice(0, 3));", canvas, x, y)
        if tuple(pixel) != MASK_COLOURS[face["mask"]]:
            failed.append(f"face {face['face']}: pixel {tuple(pixel)} at ({x}, {y}), expected the {face['mask']} "
                          f"colour {MASK_COLOURS[face['mask']]}")
    table = [row.text for row in rows]
    print(f"{screenshot.name}: status {status!r}; canvas data-boxes={boxes}; table rows: {table}")
    driver.save_screenshot(str(screenshot))
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    for task in SPECIALISTS:
        parser.add_argument(f"--{task}", type=Path, required=True, help=f"{task} run folder")
    parser.add_argument("--photo", type=Path, help="a photo with two faces (default: two eval photos side by side)")
    parser.add_argument("--out", type=Path, default=Path("runs/browser_check"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    for binary in (args.chromium, args.chromedriver):
        if not Path(binary).is_file():
            print(f"skip: no {binary} (apt-get install chromium chromium-driver)")
            return
    if args.photo is None and not (args.data / "eval" / "images").is_dir():
        print(f"skip: no --photo and no {args.data / 'eval' / 'images'}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    with tempfile.TemporaryDirectory() as folder:
        photo = args.photo or Path(folder) / "two_faces.jpg"
        if args.photo is None:
            photo.write_bytes(two_faces(args.data))
        server = Server({task: getattr(args, task) for task in SPECIALISTS}, "torch", Path(folder) / "serve.log")
        try:
            answer = httpx.post(f"{server.url}/v1/detect", timeout=300,
                                files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))]).json()
            faces = answer["photos"][0]["faces"]
            print(f"/v1/detect on {photo.name}: {len(faces)} faces, masks {[f['mask'] for f in faces]}")
            for name, (width, height) in {"desktop": (1100, 1300), "phone": (412, 1400)}.items():
                driver = browser(args.chromium, args.chromedriver, str(Path(folder) / f"profile_{name}"), width, height)
                try:
                    failed += [f"{name}: {f}" for f in check_page(driver, f"{server.url}/", photo, faces,
                                                                 args.out / f"{name}.png")]
                finally:
                    driver.quit()
        finally:
            server.stop()
    for failure in failed:
        print("FAILED:", failure)
    print(f"screenshots: {args.out / 'desktop.png'}, {args.out / 'phone.png'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
