"""A trained run made ready for inference: BatchNorm folded away, checked and timed (`gradwell fold`).

`fold_run` loads a ``gradwell train`` run folder, folds every BatchNorm it can into a neighbouring
layer (`gradwell.fold.fold_batchnorm`), and before it writes anything checks the folded model
against the trained one on the run's test split: the largest difference of their outputs, and
both test metrics. Folding changes the arithmetic only by float rounding, so a difference beyond
`tolerance` means the model holds something folding does not model, and nothing is written.

It then times one forward pass of each at the given batch size (batch 1 by default: the latency
of serving one request, where removing a pass over the activations per BatchNorm shows most) with
``torch.utils.benchmark``, which warms up, picks the number of calls per sample and reports the
median. The weights are written next to the run's own, as ``model_folded.safetensors`` with
``folded`` in their metadata, so `gradwell.run_folder.load_run` rebuilds the folded architecture.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from gradwell.errors import GradwellError
from gradwell.fold import BATCH_NORMS, FoldWarning, fold_batchnorm
from gradwell.run_folder import check_target, load_run, save_weights
from gradwell.train.losses import evaluate

FOLDED_FILE = "model_folded.safetensors"


@dataclass
class FoldResult:
    """What folding a run did, and what it bought."""

    path: Path  # the folded weights
    folded: list[str]  # the BatchNorm layers folded away
    left: list[str]  # those left in place, each with the reason
    stored_numbers: tuple[int, int]  # parameters and buffers, trained and folded
    max_difference: float  # largest |folded - trained| output on the test split
    test: tuple[dict[str, float], dict[str, float]]  # trained, folded
    latency: tuple[float, float]  # seconds per forward pass: trained, folded
    batch_size: int = 1
    threads: int = field(default_factory=torch.get_num_threads)

    @property
    def speedup(self) -> float:
        return self.latency[0] / self.latency[1]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "speedup": self.speedup}


def fold_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    batch_size: int = 1,
    tolerance: float = 1e-4,
    min_run_time: float = 0.5,
) -> FoldResult:
    """Fold a run's BatchNorm layers, check the result on its test split, time both, write it.

    Args:
        run_dir: a ``gradwell train`` run folder.
        out: where to write the folded weights (default: ``RUN_DIR/model_folded.safetensors``).
        batch_size: the batch size of the latency measurement.
        tolerance: the largest output difference accepted, relative to the largest output: float32
            rounding over a deep network stays orders of magnitude below the default.
        min_run_time: seconds of timed calls per model (torch.utils.benchmark's blocked_autorange).
    """
    if out is not None:
        check_target(Path(out), "--out")
    run = load_run(run_dir)
    trained = run.model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FoldWarning)
        folded = fold_batchnorm(trained)
    left = [str(w.message) for w in caught if issubclass(w.category, FoldWarning)]
    test = run.dataset.test
    with torch.inference_mode():
        expected, actual = trained(test.x), folded(test.x)
    difference, scale = float((actual - expected).abs().max()), float(expected.abs().max())
    if difference > tolerance * scale:
        raise GradwellError(
            f"the folded model's outputs differ from the trained model's by up to {difference:.3g} "
            f"(outputs up to {scale:.3g}, tolerance {tolerance:g} of that); nothing was written"
        )
    loss = run.config.train.loss
    metrics = (evaluate(trained, test.x, test.y, loss), evaluate(folded, test.x, test.y, loss))
    x = test[:batch_size][0]
    latency = (seconds_per_call(trained, x, min_run_time), seconds_per_call(folded, x, min_run_time))
    path = Path(out) if out is not None else run.run_dir / FOLDED_FILE
    save_weights(folded, path, metadata={"folded": "true", "run": str(run.run_dir)})
    return FoldResult(
        path=path,
        folded=[
            name
            for name, m in trained.named_modules()
            if isinstance(m, BATCH_NORMS) and is_gone(folded, name)
        ],
        left=left,
        stored_numbers=(stored_numbers(trained), stored_numbers(folded)),
        max_difference=difference,
        test=metrics,
        latency=latency,
        batch_size=batch_size,
    )


def seconds_per_call(model: nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    """Median seconds of one forward pass in inference mode (torch.utils.benchmark)."""
    timer = benchmark.Timer(
        "with torch.inference_mode(): model(x)",
        globals={"model": model, "x": x, "torch": torch},
        num_threads=torch.get_num_threads(),
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def is_gone(model: nn.Module, name: str) -> bool:
    return isinstance(model.get_submodule(name), nn.Identity)


def stored_numbers(model: nn.Module) -> int:
    """Parameters plus buffers: everything an inference deployment has to ship."""
    return sum(t.numel() for t in model.state_dict().values())
