"""What an experiment keeps: one record per config and seed, and the results of a whole run.

A record holds the per-epoch history, the test metrics, extra metrics of a custom evaluation, the
wall time and, when the run failed, the error (type and message). A failed run stays in the
results as failed; the statistics leave it out, or score it as the caller says.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOWER_IS_BETTER = ("loss", "nll", "ece", "error", "seconds")


@dataclass
class RunRecord:
    """One config trained with one seed.

    >>> record = RunRecord("elu", 0, "ok", "single", [{"epoch": 1, "val_accuracy": 0.8, "val_loss": 0.6}])
    >>> record.best, record.metric("val_loss")
    ({'val_accuracy': 0.8, 'epoch': 1, 'val_loss': 0.6}, 0.6)
    """

    label: str
    seed: int
    status: str  # "ok" or "failed"
    path: str  # "batched", "single" or "custom"
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stop_reason: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    @property
    def best(self) -> dict[str, float]:
        """The best validation accuracy and loss over the epochs, and the epoch of the first."""
        best: dict[str, float] = {}
        with_accuracy = [e for e in self.history if "val_accuracy" in e]
        if with_accuracy:
            top = max(with_accuracy, key=lambda e: e["val_accuracy"])
            best.update(val_accuracy=top["val_accuracy"], epoch=top["epoch"])
        losses = [e["val_loss"] for e in self.history if "val_loss" in e]
        if losses:
            best["val_loss"] = min(losses)
        return best

    def metric(self, name: str) -> float | None:
        """A metric of this run; None when it failed or lacks it. See ``metric_value``."""
        return metric_value(self, name) if self.ok else None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "final": self.final, "best": self.best}


def metric_value(record: RunRecord, name: str) -> float | None:
    """``test_accuracy`` / ``test_loss``: on the test set after training; ``best_val_accuracy``,
    ``best_val_loss``: the best epoch's; ``val_accuracy``, ``loss``, ...: the last epoch's;
    ``loss@3``: epoch 3's; any other name: an extra metric of the run."""
    if name.startswith("test_") and name[5:] in record.test:
        return record.test[name[5:]]
    if name.startswith("best_") and name[5:] in record.best:
        return record.best[name[5:]]
    key, at, epoch = name.partition("@")
    if at:
        rows = [e for e in record.history if e["epoch"] == int(epoch)]
        return rows[0].get(key) if rows else None
    if name in record.final:
        return record.final[name]
    return record.extra.get(name)


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics are maximized; losses, errors and calibration errors minimized.

    >>> higher_is_better("test_accuracy"), higher_is_better("val_loss")
    (True, False)
    """
    return not any(word in metric for word in LOWER_IS_BETTER)


@dataclass
class Results:
    """Every run of an experiment, in label order then seed order.

    >>> records = [RunRecord("a", s, "ok", "single", test={"accuracy": 0.5 + s / 10}) for s in (0, 1)]
    >>> results = Results(["a"], [0, 1], records, {"a": "single"})
    >>> results.values("a", "test_accuracy")
    [0.5, 0.6]
    """

    labels: list[str]
    seeds: list[int]
    records: list[RunRecord]
    paths: dict[str, str]  # label -> the path that trained it, with the reason when not batched
    seconds: float = 0.0
    data: dict[str, str] = field(default_factory=dict)  # label -> its data set's name (configs only)

    def runs(self, label: str) -> list[RunRecord]:
        return sorted((r for r in self.records if r.label == label), key=lambda r: r.seed)

    def values(self, label: str, metric: str, failed_value: float | None = None) -> list[float | None]:
        """The metric per seed (in ``seeds`` order); a failed run gives `failed_value` (None: left out)."""
        by_seed = {r.seed: r for r in self.records if r.label == label}
        values = []
        for seed in self.seeds:
            record = by_seed.get(seed)
            value = record.metric(metric) if record is not None else None
            values.append(failed_value if record is not None and not record.ok else value)
        return values

    def failed(self, label: str) -> list[RunRecord]:
        return [r for r in self.runs(label) if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "seeds": self.seeds,
            "paths": self.paths,
            "seconds": self.seconds,
            "data": self.data,
            "runs": [r.to_dict() for r in self.records],
        }

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Results:
        raw = json.loads(Path(path).read_text())
        fields = {f.name for f in dataclasses.fields(RunRecord)}
        records = [RunRecord(**{k: v for k, v in r.items() if k in fields}) for r in raw["runs"]]
        return cls(raw["labels"], raw["seeds"], records, raw["paths"], raw["seconds"], raw.get("data", {}))


def failed(
    label: str,
    seed: int,
    path: str,
    error: BaseException,
    history: Sequence[dict[str, float]] = (),
    seconds: float = 0.0,
) -> RunRecord:
    message = f"{type(error).__name__}: {error}"
    return RunRecord(label, seed, "failed", path, list(history), seconds=seconds, error=message)
