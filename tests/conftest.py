"""Shared test set-up: Keras on its torch backend, deterministic small thread pools, and the
command line run in a subprocess as a user runs it."""

import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
# Ray, started by the cluster tests, listens on the loopback address only: by default it binds the
# machine's own network address, and the suite sends nothing beyond this machine's loopback
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("MPLBACKEND", "Agg")
# The downloadable data sets: a cache of the suite's own, never the user's, and any default URL
# refused at once (port 9 on the loopback address: discard, closed) rather than tried online; the
# download tests serve their files from a local server and set both themselves
os.environ["GRADWELL_DATA"] = os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"gradwell-test-data-{os.getuid()}-{os.getppid()}"
)
os.environ["GRADWELL_DATA_MIRROR"] = "http://127.0.0.1:9"

import pytest
import torch
from hypothesis import settings

from gradwell.train import checkpoint

torch.set_num_threads(1)

# The suite is a gate, so its property tests draw the same examples on every run; a failure in CI
# is then a bug anyone can reproduce. `HYPOTHESIS_PROFILE=explore` draws fresh ones, to hunt for
# new bugs (add --hypothesis-seed=N to replay a hunt).
settings.register_profile("gate", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))


def as_float64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def rel_error(actual, expected) -> float:
    """max |actual - expected| / max(|expected|, tiny), in float64."""
    actual = as_float64(actual)
    expected = as_float64(expected)
    scale = expected.abs().max().clamp(min=1e-30)
    return float((actual - expected).abs().max() / scale)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


GRADWELL = (sys.executable, "-m", "gradwell")


def quiet_env(**extra: str) -> dict[str, str]:
    """A subprocess's environment: one torch thread (the suite runs processes side by side), and no
    Python warnings on the stderr the tests read."""
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **extra)


def gradwell(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``gradwell ARGS`` in a subprocess, its output captured."""
    env = env or quiet_env()
    return subprocess.run([*GRADWELL, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def wait_for_a_new_checkpoint(process: subprocess.Popen, directory, timeout: float = 60) -> None:
    """Until a checkpoint newer than those there now appears in `directory`, while `process` runs."""
    seen = set(checkpoint.saved_steps(directory))
    started = time.monotonic()
    while not set(checkpoint.saved_steps(directory)) - seen:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() - started < timeout
        time.sleep(0.005)
