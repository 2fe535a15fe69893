"""``gradwell train --nproc N``: the run in N processes under torchrun, its failures said in one line.

torchrun reports a worker that died, or its own Ctrl-C, as a Python traceback followed by a
failure table; the elastic agent adds log lines of its own. None of that is the user's to read:
`launch` relays the training processes' own output as it comes, leaves torchrun's out, and reads
from its failure table which process failed and how, for the command to say in one message.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gradwell.errors import ConfigError

# the elastic agent's own log lines, in glog's format: "W1201 09:33:21.824000 21863 torch/..."
AGENT_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/")
ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
OWN_EXITS = (1, 2, 130, 143)  # a gradwell error, a diverged or stopped run: the process says why
RUN_DIR_FILE = "GRADWELL_RUN_DIR_FILE"  # where process 0 tells the launcher its run folder


def launched() -> bool:
    """Whether this process is one of a run that `launch` started (and will report on)."""
    return RUN_DIR_FILE in os.environ


def tell_launcher(run_dir: Path) -> None:
    """Let the launcher know the run folder, for its message should a process fail."""
    if launched():
        Path(os.environ[RUN_DIR_FILE]).write_text(str(run_dir))


@dataclass
class Failure:
    """What torchrun's failure table says of the first process that failed."""

    rank: int | None = None
    exitcode: int | None = None

    def describe(self, nproc: int, run_dir: str) -> str:
        """Which process, how it ended (a signal by name), and how to go on."""
        who = f"training process {self.rank} of {nproc}" if self.rank is not None else "a training process"
        if self.exitcode is not None and self.exitcode < 0:
            name = signal.Signals(-self.exitcode).name
            cause = " (kill -9, or the out-of-memory killer)" if name == "SIGKILL" else ""
            ended = f"{who} was stopped by {name}{cause}"
        else:
            ended = f"{who} exited with status {self.exitcode}"
        resume = f"gradwell train --resume {run_dir or 'RUN_DIR'}"
        return f"{ended}; torchrun stopped the others. Go on from the last checkpoint with: {resume}"


class Relay:
    """Forwards torchrun's stderr line by line, leaving out torchrun's own traceback, failure
    table and log lines, and keeping what the table says of the first failure.

    The training processes' tracebacks (bugs) still pass: torch prefixes each of their lines with
    ``[rankN]:``, while torchrun's own traceback starts unprefixed.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.failure = Failure()
        self.in_torchrun_report = False
        self.in_root_cause = False

    def line(self, text: str) -> None:
        if AGENT_LOG.match(text):
            return
        if text.startswith("Traceback (most recent call last):"):
            self.in_torchrun_report = True
        if not self.in_torchrun_report:
            self.out.write(text)
            self.out.flush()
            return
        self.in_root_cause = self.in_root_cause or text.startswith("Root Cause")
        if self.in_root_cause and (found := ROOT_RANK.match(text)):
            self.failure.rank = int(found[1])
        if self.in_root_cause and (found := ROOT_EXIT.match(text)):
            self.failure.exitcode = int(found[1])

    def relay(self, stream: IO[str]) -> None:
        for text in stream:
            self.line(text)


def torchrun_command(arguments: Sequence[str], nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "gradwell", *arguments]  # fmt: skip


def launch(arguments: Sequence[str], nproc: int, out: IO[str] | None = None) -> tuple[int, str | None]:
    """Run ``gradwell ARGUMENTS`` in `nproc` processes under torchrun on this machine.

    Returns the exit status (130 after a Ctrl-C, which torchrun forwards: the processes stop after
    a step and save) and, when a process failed, one sentence saying which and how.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be at least 1; got {nproc}")
    relay = Relay(out or sys.stderr)
    interrupted = False
    descriptor, told = tempfile.mkstemp(prefix="gradwell-run-dir-")
    os.close(descriptor)
    environment = {**os.environ, RUN_DIR_FILE: told}
    command = torchrun_command(arguments, nproc)
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment) as torchrun:
        reader = threading.Thread(target=relay.relay, args=(torchrun.stderr,), daemon=True)
        reader.start()
        while True:
            try:
                code = torchrun.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
        reader.join()
    run_dir = Path(told).read_text()
    Path(told).unlink(missing_ok=True)
    if interrupted:
        return 130, None
    failure = relay.failure
    if code == 0 or (failure.exitcode is not None and failure.exitcode in OWN_EXITS):
        return failure.exitcode or code, None  # the process said what happened itself
    return code, failure.describe(nproc, run_dir)
