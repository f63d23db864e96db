"""Opening one image the way every command does: EXIF-rotated, RGB, failing loudly with the path."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from .layout import DataError


def open_rgb(path: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """The image as RGB (grey, RGBA and palette images converted; EXIF orientation applied). ``path`` may be an
    open binary file (an upload held in memory); errors call it ``name`` (default: ``path``)."""
    name = path if name is None else name
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{name}: image file is missing") from None
    except Exception as err:  # PIL raises many types for bad files
        raise DataError(f"{name}: image does not decode ({type(err).__name__}: {err})") from None
