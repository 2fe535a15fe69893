"""The one folder where gradwell keeps data on disk: downloads and generated sets alike."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder: ``GRADWELL_DATA``, else platformdirs' user cache folder + ``/data``.

    >>> from unittest import mock
    >>> with mock.patch.dict("os.environ", GRADWELL_DATA="/tmp/gradwell-data"):
    ...     cache_root() / "mnist"
    PosixPath('/tmp/gradwell-data/mnist')
    """
    if os.environ.get("GRADWELL_DATA"):
        return Path(os.environ["GRADWELL_DATA"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("gradwell")) / "data"
