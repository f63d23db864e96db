"""Opening one image the way every command does: EXIF-rotated, RGB, failing loudly with the path."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from .layout import DataError

# files taken for photos when a folder is searched (detect, export's check images); Pillow opens them all
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# PIL refuses images over 2 x Image.MAX_IMAGE_PIXELS (about 179 million pixels) as possible decompression bombs,
# and open_rgb says so naming the file. Between 1x and 2x it only warns; those are real photos (a 108-megapixel
# phone's), which the commands handle (detect shrinks its copy for MTCNN): the warning would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_rgb(path: str | Path | BinaryIO, name: str | None = None, min_side: int = 0) -> Image.Image:
    """The image as RGB (grey, RGBA and palette images converted; EXIF orientation applied). ``path`` may be an
    open binary file (an upload held in memory); errors call it ``name`` (default: ``path``). ``min_side``: a
    JPEG is decoded smaller as long as its longer side stays at least this (:func:`reduce_jpeg`)."""
    name = path if name is None else name
    try:
        with Image.open(path) as image:
            reduce_jpeg(image, min_side)
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{name}: image file is missing") from None
    except Image.DecompressionBombError as err:  # raised from the header, before any pixel is decoded
        raise DataError(f"{name}: not decoded, a possible decompression bomb ({err})") from None
    except Exception as err:  # PIL raises many types for bad files
        raise DataError(f"{name}: image does not decode ({type(err).__name__}: {err})") from None


def reduce_jpeg(image: Image.Image, min_side: int) -> int:
    """Have ``image`` (opened, not loaded) decode at the smallest of 1, 1/2, 1/4 or 1/8 scale whose longer side is
    still at least ``min_side`` (0: full size), and return that scale's divisor. Only a JPEG can (libjpeg scales
    while it decodes, through Pillow's ``draft``); its ``size`` then says the smaller size. Reads no pixel."""
    width, height = image.size
    longest = max(width, height)
    if not min_side or longest <= min_side:
        return 1
    drafted = image.draft(image.mode, (min_side, 1) if width >= height else (1, min_side))  # the longer side
    return 1 if drafted is None else round(width / drafted[1][2])  # drafted: (mode, box of the original / scale)
