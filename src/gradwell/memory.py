"""How much memory a run would need, checked against what the machine has, before it is spent.

A size typed one digit too long (``num_samples = 400000000``, ``hidden = [1000000000]``) would
otherwise generate for minutes, swap the machine or end in an allocator's traceback. The checks
here are estimates from sizes alone, so they run before anything is allocated.
"""

from __future__ import annotations

import os

from gradwell.errors import ConfigError

FLOAT32 = 4
# weights, their gradients and two optimizer buffers (Adam's moments): what training holds per
# parameter, activations aside
TRAINING_COPIES = 4


def available_bytes() -> int:
    """Memory the machine can give now: MemAvailable (Linux), else all physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def readable(nbytes: float) -> str:
    """A byte count for people: 1.5 GB, 320 MB.

    >>> readable(1.5e9), readable(3.2e8), readable(2e12)
    ('1.5 GB', '320 MB', '2 TB')
    """
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} B"


def check_fits(what: str, nbytes: float, available: int | None = None) -> None:
    """ConfigError naming `what` when `nbytes` exceed the machine's available memory.

    >>> check_fits("num_samples = 10**12", 1.6e14, available=24 * 10**9)
    Traceback (most recent call last):
    ...
    gradwell.errors.ConfigError: num_samples = 10**12 would need 160 TB of memory; this machine has 24 GB free
    """
    available = available_bytes() if available is None else available
    if nbytes > available:
        raise ConfigError(
            f"{what} would need {readable(nbytes)} of memory; this machine has {readable(available)} free"
        )
