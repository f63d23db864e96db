"""Opening one image the way every command does: an accepted format only, EXIF-rotated, 8-bit RGB, failing loudly
with the path."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

# Pillow's names of the formats every command reads (a multi-picture JPEG, MPO, opens as JPEG); any other plugin
# is never started, so a PostScript file cannot start Ghostscript. What the web page says it takes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
# files taken for photos when a folder is searched (detect, export's check images): the accepted formats' suffixes
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp")
# PIL refuses images over 2 x Image.MAX_IMAGE_PIXELS (about 179 million pixels) as possible decompression bombs,
# and open_rgb says so naming the file. Between 1x and 2x it only warns; those are real photos (a 108-megapixel
# phone's), which the commands handle (detection shrinks its copy): the warning would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # grey with 0-65535 levels (a 16-bit PNG opens as I;16)
WITH_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
OPAQUE = ("1", "L", "P", "RGB", "CMYK", "YCbCr")  # what Pillow's convert("RGB") turns into RGB as it should
WHITE = (255, 255, 255)  # transparent pixels show as on a white page


def open_rgb(path: str | Path | BinaryIO, name: str | None = None, min_side: int = 0) -> Image.Image:
    """The image as 8-bit RGB (see ``to_rgb``; EXIF orientation applied). ``path`` may be an open binary file (an
    upload held in memory); errors call it ``name`` (default: ``path``). ``min_side``: a JPEG is decoded smaller
    as long as its longer side stays at least this (:func:`reduce_jpeg`)."""
    return _open(path, name, min_side)[0]


def open_bounded(path: str | Path | BinaryIO, max_side: int,
                 name: str | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(the image shrunk so that its longer side is at most ``max_side``, the size of the image itself): a bounded
    copy to detect faces on. A JPEG is decoded at reduced size first (:func:`reduce_jpeg`), so a huge photo never
    takes its full size in memory. An image within ``max_side`` is exactly ``open_rgb``'s."""
    image, size = _open(path, name, max_side)
    target = bounded_size(size, max_side)
    return (image if image.size == target else image.resize(target, Image.BILINEAR)), size


def bounded_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled so that its longer side is ``max_side``; as it is when already within it."""
    if max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _open(path, name, min_side: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """(the image as ``open_rgb`` returns it, the size of the image itself, EXIF-rotated)."""
    name = path if name is None else name
    try:
        with Image.open(path, formats=ACCEPTED_FORMATS) as image:
            turned = image.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF turns it by 90 degrees
            size = image.size[::-1] if turned else image.size
            reduce_jpeg(image, min_side)
            return to_rgb(ImageOps.exif_transpose(image), name), size
    except FileNotFoundError:
        raise DataError(f"{name}: image file is missing") from None
    except Image.DecompressionBombError as err:  # raised from the header, before any pixel is decoded
        raise DataError(f"{name}: not decoded, a possible decompression bomb ({err})") from None
    except Image.UnidentifiedImageError as err:
        found = sniff_format(path)
        if found and found not in ACCEPTED_FORMATS:
            raise DataError(f"{name}: {found} images are not read (accepted: {', '.join(ACCEPTED_FORMATS)})") from None
        raise DataError(f"{name}: image does not decode ({type(err).__name__}: {err})") from None
    except DataError:
        raise
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


def sniff_format(path: str | Path | BinaryIO) -> str | None:
    """The Pillow format whose header test takes the file's first bytes, or None; no plugin is started."""
    try:
        if hasattr(path, "read"):
            start = path.tell()
            prefix = path.read(16)
            path.seek(start)
        else:
            with open(path, "rb") as file:
                prefix = file.read(16)
    except OSError:
        return None
    Image.init()
    return next((name for name in Image.ID if _accepts(Image.OPEN[name][1], prefix)), None)


def _accepts(accept, prefix: bytes) -> bool:
    try:
        return bool(accept and accept(prefix))
    except Exception:  # a header test may fail on a short file
        return False


def to_rgb(image: Image.Image, name: str | Path = "image") -> Image.Image:
    """``image`` as 8-bit RGB: 16-bit grey scaled to 0-255 (not clipped, which turns it white), transparent pixels
    laid on white, grey, palette and CMYK converted; any other mode (floating point, ...) a DataError naming it."""
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT:
        levels = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if image.mode in WITH_ALPHA or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    if image.mode in OPAQUE:
        return image.convert("RGB")
    raise DataError(f"{name}: pixel mode {image.mode} is not read (8- or 16-bit grey, RGB, RGBA, palette or CMYK is)")
