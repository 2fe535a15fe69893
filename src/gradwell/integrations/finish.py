"""What the trainer callbacks share: their arguments, checked early, and the end of training,
where the doctor is closed and its verdicts go to the log (library code prints nothing)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from gradwell.diagnose.report import Report
from gradwell.diagnose.watch import DEFAULT_EVERY, Doctor
from gradwell.errors import GradwellError
from gradwell.train.options import positive_count

# which gradients the report shows: the adapters pass the trainer's GradScaler themselves, so the
# doctor's own hint (pass scaler=) would send the reader looking for an argument they do not have
GRADIENTS = "as the backward pass left them, summed over the step's micro-batches, before any clipping"


class Settings:
    """A callback's settings, as ``gradwell.watch`` takes them, and what it leaves: the doctor
    (on rank 0 once training began) and its report (after training; None if nothing was sampled).
    `every` is checked when the callback is made rather than when a trainer first calls it,
    minutes later."""

    def __init__(
        self,
        every: int = DEFAULT_EVERY,
        layers: str | re.Pattern | Sequence[str | re.Pattern] | None = None,
        tensorboard: str | Path | None = None,
    ) -> None:
        positive_count("DoctorCallback every", every)
        self.every, self.layers, self.tensorboard = every, layers, tensorboard
        self.doctor: Doctor | None = None
        self.report: Report | None = None


def gradients(scaler: Any) -> str:
    """What ``Report.gradients`` says for a trainer whose loss scaler is `scaler` (None: none)."""
    return GRADIENTS if scaler is None else f"{GRADIENTS}, divided by the GradScaler's scale"


def finish(doctor: Doctor, log: logging.Logger) -> Report | None:
    """Close `doctor` and log its verdicts: the summary at INFO, a WARNING per problem. None (the
    reason logged as a warning) when no step was sampled: a short run must not fail at its end."""
    doctor.close()
    try:
        report = doctor.report()
    except GradwellError as error:
        # a doctor that never began: its own hint (call doctor.step()) is for hand-counting loops
        why = (
            error if doctor.missed else f"the run reached no optimizer step divisible by every={doctor.every}"
        )
        log.warning("stability doctor: no report: %s", why)
        return None
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(report.summary())
    log.info("stability doctor, sampled steps %s:\n%s", report.history.steps, console.file.getvalue())
    for verdict in report.verdicts:
        if verdict.name != "healthy":
            fixes = "".join(f"; fix: {fix}" for fix in verdict.fixes)
            log.warning("stability doctor: %s: %s%s", verdict.name, verdict.summary, fixes)
    return report
