"""Progress bars for long work (tqdm), quiet when asked or off a terminal in CI logs."""
from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    kwargs.setdefault("disable", os.environ.get("MASKCLS_NO_PROGRESS") == "1")
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 draws bars
        kwargs["disable"] = True
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
