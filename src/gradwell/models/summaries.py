"""A Keras-style summary of a model: its layers, output shapes and parameter counts."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from gradwell.errors import GradwellError
from gradwell.models.builders import positive_ints


@dataclass(frozen=True)
class SummaryRow:
    """One layer: its dotted name, class, output shape (None for the batch axis) and parameter counts.

    >>> from torch import nn
    >>> summary(nn.Linear(3, 2), (3,)).rows[0]
    SummaryRow(name='Linear', type='Linear', output_shape=(None, 2), trainable=8, non_trainable=0)
    """

    name: str
    type: str
    output_shape: tuple[int | None, ...] | None
    trainable: int
    non_trainable: int


@dataclass(frozen=True)
class Summary:
    """A model's layers and parameter counts, as Keras's ``model.summary()`` shows them.

    ``print`` shows it as a table, ``to_dict`` as JSON-ready data:

    >>> from torch import nn
    >>> shown = summary(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), (3,))
    >>> shown.trainable, shown.non_trainable, shown.total
    (12, 4, 16)
    >>> [(layer["name"], layer["output_shape"]) for layer in shown.to_dict()["layers"]]
    [('0', (None, 2)), ('1', (None, 2))]
    """

    rows: tuple[SummaryRow, ...]

    @property
    def trainable(self) -> int:
        return sum(row.trainable for row in self.rows)

    @property
    def non_trainable(self) -> int:
        return sum(row.non_trainable for row in self.rows)

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def to_dict(self) -> dict:
        return {
            "layers": [asdict(row) for row in self.rows],
            "trainable": self.trainable,
            "non_trainable": self.non_trainable,
            "total": self.total,
        }

    def __rich__(self) -> Table:
        table = Table(
            "layer",
            "type",
            "output shape",
            "trainable",
            "non-trainable",
            caption=f"Total params: {self.total:,}",
        )
        for row in self.rows:
            shape = "?" if row.output_shape is None else str(row.output_shape).replace(",)", ")")
            table.add_row(row.name, row.type, shape, f"{row.trainable:,}", f"{row.non_trainable:,}")
        table.add_section()
        table.add_row("total", "", "", f"{self.trainable:,}", f"{self.non_trainable:,}")
        return table

    def __str__(self) -> str:
        console = Console(file=io.StringIO(), width=120, color_system=None)
        console.print(self)
        return console.file.getvalue()


def summary(model: nn.Module, example: Tensor | Sequence[int] | None = None) -> Summary:
    """The layers of `model` with their output shapes and trainable / non-trainable parameter counts.

    A row per leaf module and per module holding parameters itself, with its dotted name. Trainable
    counts parameters with requires_grad; non-trainable counts frozen parameters and floating-point
    buffers, i.e. BatchNorm's moving mean and variance (the chapter: a BN layer has 4 parameters
    per feature, 2 of them non-trainable), not the integer ``num_batches_tracked``. A parameter
    shared by several layers counts once.

    `example` is a batch, or an input shape without the batch axis (a zero batch of 1 is made);
    it runs once in eval mode under no_grad to record output shapes, so BatchNorm statistics and
    the RNG are untouched, and each module's training flag is restored. It defaults to the
    ``input_shape`` that `mlp` and `cnn` record on their models; without either, shapes are
    unknown (lazy modules then cannot be counted).

    >>> from gradwell.models import mlp
    >>> shown = summary(mlp((2, 3), 4, [5], batchnorm="after"))
    >>> for row in shown.rows:
    ...     print(row.name, row.type, row.output_shape, row.trainable, row.non_trainable)
    flatten Flatten (None, 6) 0 0
    hidden1.linear Linear (None, 5) 35 0
    hidden1.activation ReLU (None, 5) 0 0
    hidden1.norm BatchNorm (None, 5) 10 10
    output Linear (None, 4) 24 0
    >>> shown.total
    79
    """
    if example is None:
        example = getattr(model, "input_shape", None)
    if example is not None:
        shapes = output_shapes(model, example)
    else:
        shapes = {}
        if any(nn.parameter.is_lazy(t) for t in (*model.parameters(), *model.buffers())):
            raise GradwellError("the model has lazy (uninitialized) layers; pass an example input to summary")
    seen: set[int] = set()
    return Summary(tuple(summary_row(name, module, shapes.get(name), seen) for name, module in layers(model)))


def layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """Modules that are leaves or hold parameters or buffers themselves (not mere containers)."""
    for name, module in model.named_modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if own or not any(True for _ in module.children()):
            yield name, module


def summary_row(
    name: str, module: nn.Module, shape: tuple[int | None, ...] | None, seen: set[int]
) -> SummaryRow:
    trainable = non_trainable = 0
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if id(tensor) in seen or not tensor.is_floating_point():
            continue
        seen.add(id(tensor))
        if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
            trainable += tensor.numel()
        else:
            non_trainable += tensor.numel()
    return SummaryRow(name or type(module).__name__, type(module).__name__, shape, trainable, non_trainable)


def output_shapes(model: nn.Module, example: Tensor | Sequence[int]) -> dict[str, tuple[int | None, ...]]:
    """Each layer's output shape (batch axis as None) from one eval-mode pass without side effects."""
    if not isinstance(example, Tensor):
        reference = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0))
        dtype = reference.dtype if reference.is_floating_point() else torch.get_default_dtype()
        example = torch.zeros(
            (1, *positive_ints("example shape", example)), dtype=dtype, device=reference.device
        )
    shapes: dict[str, tuple[int | None, ...]] = {}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, Tensor) and name not in shapes:
                shapes[name] = (None, *output.shape[1:])

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return shapes
