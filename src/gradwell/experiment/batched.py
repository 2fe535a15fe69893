"""Seed-batched training: K copies of a small MLP, one per seed, trained as one network.

A small network leaves a CPU (or GPU) idle between kernel launches: most of a step's time is
per-operation overhead. Training K seeds one after the other pays that overhead K times.
Here the K models' parameters are stacked along a leading seed axis, so that

    Linear      W^T: (K, in, out), b: (K, 1, out),  y = baddbmm(b, x, W^T)   for x: (K, B, in)
    BatchNorm   gamma, beta, moving statistics: (K, F), one fused kernel over (B, K * F)
    Dropout     each seed draws its masks from its own generator
    RReLU       each seed draws its slopes from that same generator

and one step trains all K. The loss is the sum over seeds of each seed's mean loss, so each
seed's gradient is exactly the one it would get alone; the optimizer must update every element
on its own (``gradwell.optim.is_elementwise``: gradwell's do, their step counters are shared, and
equal), and clipping by norm is done per seed here. Each seed starts from its own model (built
with its own generator), shuffles with its own generator and draws its dropout masks and RReLU
slopes from one generator seeded like the global RNG of ``gradwell.train.fit``, layer after layer
as its lone run draws them from that RNG: training seed s in a batch gives the run
``fit(..., seed=s)`` gives, up to float reassociation (tested in float64 to 1e-10). On CUDA, torch
draws dropout masks with a fused kernel whose random stream differs, so masks there (and the
slopes drawn after them) are equally random but not the same as a single run's.

Supported: nn.Sequential stacks of Linear, gradwell BatchNorm (features axis, frozen or not),
parameter-free elementwise activations (each activation record's ``stackable``), PReLU, learnable
Swish, RReLU, Dropout and AlphaDropout, Flatten; every gradwell optimizer with any clipping, and
torch's elementwise ones; schedules that step per optimizer step; l1/l2 penalties and max-norm.
Not supported (``stack_problem`` says which, and the runner trains those seeds one at a time):
convolutions, a schedule or early stopping driven by each seed's validation loss, a loss given as
a function, an optimizer with a per-tensor update (LAMB, LARS: a trust ratio over the stacked
tensor would mix the seeds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from gradwell import activations
from gradwell.errors import GradwellError, NonFiniteError
from gradwell.norm import BatchNorm, update_moving_statistics_
from gradwell.optim import is_elementwise
from gradwell.regularize import l1_l2_penalty, max_norm_
from gradwell.train.fused import plan
from gradwell.train.fused_ops import alpha_dropout_affine
from gradwell.train.loop import History
from gradwell.train.losses import CLASSIFICATION, LOSSES
from gradwell.train.options import TrainOptions, training_options

CLIP_OPTIONS = ("clipnorm", "global_clipnorm")

# Batching pays while per-operation overhead dominates a step. With wider layers the optimizer's
# passes over K seeds' stacked state stream from memory rather than cache: on 2 CPU cores, Adam on
# 3 x 512 layers ran at 0.8x the speed of one seed after another (BENCHMARKS.md).
LARGEST_BATCHED_LAYER = 256 * 256
# A plain Linear + activation stack trains one seed at a time on fit's fused MLP step, which cuts
# the same per-operation overhead batching does: batching 10 seeds still ran 3.4x faster on 2 x 100
# hidden layers and 1.2x on 10 x 100 (11 Linear layers with the output), but no faster on 30 x 100
# (BENCHMARKS.md). With BatchNorm and dropout the fused step gains less than batching: batching ran
# 1.8x faster on 10 x 100 and 30 x 100 alike, so the limit holds for plain stacks only.
DEEPEST_BATCHED_FUSED = 11
PLAIN = ("linear", "activation")


class StackedLinear(nn.Module):
    """K Linear layers as one: (K, B, in) -> (K, B, out).

    The weights are kept transposed, (K, in, out): the weight gradient then comes out of the
    batched product contiguous, where torch's (out, in) layout would cost a copy of every weight
    per step (3 times slower for 512 x 512 layers on a CPU).
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.stack([layer.weight.detach().t() for layer in layers])
        )  # (K, in, out)
        has_bias = layers[0].bias is not None
        self.bias = (
            nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]).unsqueeze(1))  # (K, 1, out)
            if has_bias
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)

    def unstack_into(self, layers: Sequence[nn.Linear]) -> None:
        for k, layer in enumerate(layers):
            layer.weight.copy_(self.weight[k].t())
            if self.bias is not None:
                layer.bias.copy_(self.bias[k, 0])


class StackedBatchNorm(nn.Module):
    """K gradwell BatchNorms over features: statistics per seed and feature over the batch.

    (K, B, F) is laid out as (B, K * F) so that torch's fused kernel normalizes every (seed,
    feature) column on its own, with the chapter's moving averages applied as in BatchNorm (one
    ``update_moving_statistics_``, from the scratch buffers the kernel writes into).
    """

    def __init__(self, norms: Sequence[BatchNorm]) -> None:
        super().__init__()
        first = norms[0]
        self.momentum, self.eps, self.frozen = first.momentum, first.eps, first.frozen
        self.weight = self.stacked(norms, "weight", nn.Parameter)
        self.bias = self.stacked(norms, "bias", nn.Parameter)
        self.register_buffer("running_mean", torch.stack([n.running_mean for n in norms]))  # (K, F)
        self.register_buffer("running_var", torch.stack([n.running_var for n in norms]))  # (K, F)

    @staticmethod
    def stacked(norms: Sequence[BatchNorm], name: str, kind: type) -> Tensor | None:
        values = [getattr(n, name) for n in norms]
        return None if values[0] is None else kind(torch.stack([v.detach() for v in values]))  # (K, F)

    def forward(self, x: Tensor) -> Tensor:
        k, b, f = x.shape
        columns = x.transpose(0, 1).reshape(b, k * f)
        weight = None if self.weight is None else self.weight.reshape(-1)
        bias = None if self.bias is None else self.bias.reshape(-1)
        if not self.training or self.frozen:
            mean, var = self.running_mean.reshape(-1), self.running_var.reshape(-1)
            out = F.batch_norm(columns, mean, var, weight, bias, False, 0.0, self.eps)
        else:
            if b < 2:
                raise GradwellError(
                    f"BatchNorm needs more than 1 value per feature in training; a batch of {b} has {b}"
                )
            # scratch buffers: torch's kernel writes the batch statistics there (momentum 1)
            mean = torch.zeros(k * f, dtype=self.running_mean.dtype, device=x.device)
            unbiased = torch.zeros_like(mean)
            out = F.batch_norm(columns, mean, unbiased, weight, bias, True, 1.0, self.eps)
            mean, biased = mean.view(k, f), unbiased.view(k, f) * ((b - 1) / b)
            update_moving_statistics_(
                [self.running_mean, self.running_var], [mean, biased], [self.momentum] * 2
            )
        return out.view(b, k, f).transpose(0, 1)

    def unstack_into(self, norms: Sequence[BatchNorm]) -> None:
        for k, norm in enumerate(norms):
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(norm, name) is not None:
                    getattr(norm, name).copy_(getattr(self, name)[k])


class SeedDropout(nn.Module):
    """Dropout (or AlphaDropout) whose masks for seed k come from generator k.

    The masks are drawn as torch draws them on the CPU, ``empty_like(x).bernoulli_(1 - p)``, so
    seed k gets the masks a single run seeded with k gets.
    """

    def __init__(self, p: float, generators: Sequence[torch.Generator], alpha: bool) -> None:
        super().__init__()
        self.p, self.generators, self.alpha = p, list(generators), alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty_like(x)
        for k, generator in enumerate(self.generators):
            keep[k].bernoulli_(1 - self.p, generator=generator)
        if not self.alpha:
            return x * keep.div_(1 - self.p)
        scale, shift = alpha_dropout_affine(keep, self.p)  # dropped units at -alpha', then A x + B
        return x * scale + shift

    def unstack_into(self, modules: Sequence[nn.Module]) -> None: ...


class SeedRReLU(nn.Module):
    """RReLU (Xu et al., 2015) whose slopes for seed k come from generator k, the one its dropout uses.

    In training each element z <= 0 gets a slope r ~ U(lower, upper), y = r z; in eval the mean
    slope (lower + upper) / 2. torch's CPU kernel draws one number per element z <= 0 only, in
    order, so the stream a seed consumes depends on its own inputs: each seed's slice goes through
    that kernel (``rrelu_with_noise``) with its generator, as its lone run's input goes through it
    with the global RNG. The slopes it writes (1 where z > 0) then give y = z * slopes for all
    seeds in one product. Its gradient, dy * slopes, is the one autograd takes through torch's
    kernel for a lone seed, but where upper - lower <= 1e-6: torch's backward then takes the mean
    slope, off from the drawn ones by under 1e-6.

    >>> generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    >>> z = -torch.ones(2, 3, 4)  # (K, B, F)
    >>> slopes = -SeedRReLU(nn.RReLU(), generators)(z)
    >>> _ = torch.manual_seed(1)  # seed 1's lone run: the global RNG, seeded 1
    >>> torch.equal(slopes[1], -F.rrelu(z[1], training=True))
    True
    """

    def __init__(self, module: nn.RReLU, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.lower, self.upper, self.generators = module.lower, module.upper, list(generators)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.rrelu(x, self.lower, self.upper, training=False)
        # contiguous, so that each seed's slice is the block the kernel fills in order
        slopes = torch.empty_like(x, memory_format=torch.contiguous_format)
        with torch.no_grad():
            for k, generator in enumerate(self.generators):
                torch.ops.aten.rrelu_with_noise(x[k], slopes[k], self.lower, self.upper, True, generator)
        return x * slopes

    def unstack_into(self, modules: Sequence[nn.Module]) -> None: ...


class StackedLearnedActivation(nn.Module):
    """K PReLUs or K learnable Swishes: each seed's alpha or beta, (K, 1, C) or (K, 1, 1), against
    its (K, B, C) slice: PReLU(x) = x if x > 0 else alpha x, Swish(x) = x sigmoid(beta x)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.prelu = isinstance(modules[0], nn.PReLU)
        values = [learned_parameter(module) for module in modules]
        self.weight = nn.Parameter(torch.stack([v.detach() for v in values]).unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        if self.prelu:
            return torch.where(x > 0, x, self.weight * x)
        return x * torch.sigmoid(self.weight * x)

    def unstack_into(self, modules: Sequence[nn.Module]) -> None:
        for k, module in enumerate(modules):
            learned_parameter(module).copy_(self.weight[k, 0])


def learned_parameter(module: nn.Module) -> Tensor | None:
    """PReLU's alpha or a learnable Swish's beta, the activations the seed-batched path stacks."""
    if isinstance(module, nn.PReLU):
        return module.weight
    if isinstance(module, activations.Swish) and module.learnable:
        return module.beta
    return None


class StackedFlatten(nn.Module):
    """nn.Flatten(1) of each seed's batch: (K, B, *shape) -> (K, B, prod(shape))."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2)

    def unstack_into(self, modules: Sequence[nn.Module]) -> None: ...


class Shared(nn.Module):
    """A parameter-free elementwise module, shared by all seeds."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def unstack_into(self, modules: Sequence[nn.Module]) -> None: ...


def leaves(model: nn.Module) -> list[nn.Module]:
    """The modules an nn.Sequential tree runs, in order."""
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in leaves(child)]
    return [model]


def leaf_problem(module: nn.Module) -> str | None:
    """Why `module` cannot be stacked, or None when it can."""
    name = type(module).__name__
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, BatchNorm):
        return None if module.axis == (1,) else f"BatchNorm with axis {module.axis}"
    if isinstance(module, (nn.Dropout, nn.AlphaDropout)):
        return None
    if isinstance(module, nn.Flatten):
        return None if (module.start_dim, module.end_dim) == (1, -1) else "Flatten other than Flatten(1)"
    if learned_parameter(module) is not None or isinstance(module, nn.RReLU):
        return None
    info = activations.activation_info(module)
    if info is not None and info.stackable:
        has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        return f"{name} with learnable parameters" if has_state else None
    return f"layer {name}"


def optimizer_problem(optimizer: torch.optim.Optimizer | type[torch.optim.Optimizer]) -> str | None:
    """Why seed-batched training cannot use this optimizer (or optimizer class), or None."""
    if is_elementwise(optimizer):
        return None
    name = (optimizer if isinstance(optimizer, type) else type(optimizer)).__name__
    return (
        f"{name} does not declare an elementwise update (gradwell.optim.is_elementwise): "
        "seed-batched training would apply it to the K seeds' stacked tensors at once"
    )


def stack_problem(
    models: Sequence[nn.Module],
    optimizer: torch.optim.Optimizer | type[torch.optim.Optimizer] | None = None,
) -> str | None:
    """Why `models` cannot be trained as one seed-batched network, or None when they can.

    `optimizer`, when given, is the optimizer one of them would train with (or its class): it must
    update element by element (``optimizer_problem``); fit_seeds checks the one it builds anyway.

    >>> from gradwell.models import mlp
    >>> stack_problem([mlp(4, 2, hidden=[8]), mlp(4, 2, hidden=[8])]) is None
    True
    >>> stack_problem([nn.Sequential(nn.Conv1d(1, 2, 3))] * 2)
    'layer Conv1d is not supported by seed-batched training'
    """
    if not models:
        return "no models"
    if optimizer is not None and (problem := optimizer_problem(optimizer)) is not None:
        return problem
    paths = [leaves(model) for model in models]
    first = paths[0]
    for module in first:
        problem = leaf_problem(module)
        if problem is not None:
            return f"{problem} is not supported by seed-batched training"
    for other in paths[1:]:
        same = len(other) == len(first) and all(
            type(a) is type(b) and [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
            for a, b in zip(first, other, strict=False)
        )
        if not same:
            return "the models differ in structure"
    return None


def too_large_to_pay(models: Sequence[nn.Module]) -> str | None:
    """Why batching these models would not be faster than training them one by one, or None."""
    largest = max((m.weight.numel() for m in leaves(models[0]) if isinstance(m, nn.Linear)), default=0)
    if largest > LARGEST_BATCHED_LAYER:
        return f"a layer of {largest} weights (batching pays up to {LARGEST_BATCHED_LAYER})"
    fused = plan(models[0])
    plain = not isinstance(fused, str) and all(kind in PLAIN for kind, _ in fused.modules)
    depth = len(fused.linears) if plain else 0
    if depth > DEEPEST_BATCHED_FUSED:
        return (
            f"{depth} Linear layers that fit's fused MLP step trains about as fast one seed at a "
            f"time (batching pays up to {DEEPEST_BATCHED_FUSED})"
        )
    return None


def stack(models: Sequence[nn.Module], generators: Sequence[torch.Generator]) -> nn.Sequential:
    """One network computing all `models` at once on inputs of shape (K, B, ...).

    ``generators[k]`` stands for seed k's global RNG: its dropout masks and RReLU slopes are drawn
    from it, layer by layer, in the order its lone run draws them.
    """
    problem = stack_problem(models)
    if problem is not None:
        raise GradwellError(problem)
    columns = list(zip(*(leaves(model) for model in models), strict=True))
    stacked = []
    for column in columns:
        first = column[0]
        if isinstance(first, nn.Linear):
            stacked.append(StackedLinear(column))
        elif isinstance(first, BatchNorm):
            stacked.append(StackedBatchNorm(column))
        elif isinstance(first, (nn.Dropout, nn.AlphaDropout)):
            stacked.append(SeedDropout(first.p, generators, isinstance(first, nn.AlphaDropout)))
        elif isinstance(first, nn.RReLU):
            stacked.append(SeedRReLU(first, generators))
        elif isinstance(first, nn.Flatten):
            stacked.append(StackedFlatten())
        elif learned_parameter(first) is not None:
            stacked.append(StackedLearnedActivation(column))
        else:
            stacked.append(Shared(first))
    return nn.Sequential(*stacked)


@torch.no_grad()
def unstack_into(stacked: nn.Sequential, models: Sequence[nn.Module]) -> None:
    """Copy each seed's trained parameters and statistics back into its own model."""
    columns = list(zip(*(leaves(model) for model in models), strict=True))
    for module, column in zip(stacked, columns, strict=True):
        module.unstack_into(column)


@dataclass
class SeedRun:
    """One seed's outcome: its history, and the error that ended it (None when it completed)."""

    history: History
    error: NonFiniteError | None = None


def per_seed_loss(loss: str, output: Tensor, target: Tensor) -> Tensor:
    """Each seed's mean loss over its batch: (K, B, ...) -> (K,)."""
    k = output.shape[0]
    values = LOSSES[loss](output.flatten(0, 1), target.flatten(0, 1), reduction="none")
    return values.reshape(k, -1).mean(1)


def clip_per_seed_(params: list[Tensor], kind: str, threshold: float) -> None:
    """Keras's clipnorm (each tensor) or global_clipnorm (all tensors), for each seed on its own."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (T, K)
    if kind == "global_clipnorm":
        norms = torch.linalg.vector_norm(norms, dim=0).expand_as(norms)  # (T, K)
    factors = torch.clamp(threshold / norms, max=1.0)
    for grad, factor in zip(grads, factors, strict=True):
        grad.mul_(factor.view(-1, *[1] * (grad.dim() - 1)))


@torch.no_grad()
def evaluate_seeds(
    stacked: nn.Module, x: Tensor, y: Tensor, k: int, loss: str, batch_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Each seed's mean loss and accuracy on (x, y), in eval mode: two (K,) tensors."""
    stacked.eval()
    total = torch.zeros(k, dtype=torch.float64, device=x.device)
    correct = torch.zeros(k, dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = stacked(xb.expand(k, *xb.shape))  # (K, b, C)
        target = yb.expand(k, *yb.shape)
        total += per_seed_loss(loss, out, target).double() * len(xb)
        if loss in CLASSIFICATION:
            correct += (out.argmax(-1) == target).sum(1)
    return total / len(x), correct.double() / len(x)


@dataclass
class SeedLoop:
    """What one epoch of seed-batched training needs."""

    stacked: nn.Sequential
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss: str
    clip: tuple[str, float] | None
    l1: float
    l2: float
    max_norm: float | None
    weights: list[Tensor]

    def step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step for every seed; (K,) losses and (K,) correct counts."""
        self.optimizer.zero_grad(set_to_none=True)
        output = self.stacked(x)  # (K, B, C)
        losses = per_seed_loss(self.loss, output, y)  # (K,)
        objective = losses.sum()
        if self.l1 > 0 or self.l2 > 0:
            objective = objective + l1_l2_penalty(self.weights, self.l1, self.l2)
        objective.backward()
        if self.clip is not None:
            clip_per_seed_(list(self.stacked.parameters()), *self.clip)
        self.optimizer.step()
        if self.max_norm is not None:
            max_norm_(self.weights, self.max_norm, axis=1)  # each seed's each unit: (K, in, out)
        if self.scheduler is not None:
            self.scheduler.step()
        return losses.detach(), (output.argmax(-1) == y).sum(1)

    def epoch(
        self, x: Tensor, y: Tensor, batch_size: int, shuffles: list[torch.Generator], step: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One pass per seed over its own shuffle: (K,) mean loss, accuracy, first non-finite step."""
        self.stacked.train()
        k = len(shuffles)
        orders = torch.stack([torch.randperm(len(x), generator=g, device=g.device) for g in shuffles])
        loss_sum = torch.zeros(k, dtype=torch.float64, device=x.device)
        correct = torch.zeros(k, dtype=torch.int64, device=x.device)
        first_nonfinite = torch.full((k,), -1, dtype=torch.int64, device=x.device)
        for start in range(0, len(x), batch_size):
            index = orders[:, start : start + batch_size]  # (K, B)
            losses, hits = self.step(x[index], y[index])
            loss_sum += losses.double() * index.shape[1]
            correct += hits
            fresh = (first_nonfinite < 0) & ~torch.isfinite(losses)
            first_nonfinite = torch.where(fresh, step, first_nonfinite)
            step += 1
        return loss_sum / len(x), correct.double() / len(x), first_nonfinite


def options_problem(options: TrainOptions) -> str | None:
    """Why seed-batched training cannot honour these training options (None when it can)."""
    if options.on_nonfinite != "stop":
        return "on_nonfinite='skip' skips each seed's bad steps on its own"
    if options.precision != "fp32":
        return f"precision {options.precision!r} (the seed-batched network trains in fp32)"
    return None


def make_loop(
    stacked: nn.Sequential,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    schedule: Callable[[torch.optim.Optimizer], Any] | None,
    options: TrainOptions,
) -> SeedLoop:
    loss = options.loss
    problem = options_problem(options)
    if problem is not None:
        raise GradwellError(f"seed-batched training cannot take {problem}; train it with gradwell.train.fit")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise GradwellError(f"seed-batched training needs a loss named in {', '.join(LOSSES)}; got {loss!r}")
    created = optimizer(stacked)
    problem = optimizer_problem(created)
    if problem is not None:
        raise GradwellError(problem)
    clip = getattr(created, "clip", None)
    if clip is not None and clip[0] in CLIP_OPTIONS:
        created.clip = None  # a norm over the stacked tensors would mix seeds: clipped per seed instead
    else:
        clip = None  # clipvalue is elementwise: the optimizer's own clipping is already per seed
    scheduler = schedule(created) if schedule is not None else None
    if isinstance(scheduler, ReduceLROnPlateau):
        raise GradwellError(
            "seed-batched training cannot follow each seed's validation loss with one learning rate; "
            "train with ReduceLROnPlateau ('performance') one seed at a time"
        )
    weights = [m.weight for m in stacked if isinstance(m, StackedLinear)]
    return SeedLoop(
        stacked, created, scheduler, loss, clip, options.l1, options.l2, options.max_norm, weights
    )


def fit_seeds(
    models: Sequence[nn.Module],
    data: Any,
    *,
    seeds: Sequence[int],
    optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    schedule: Callable[[torch.optim.Optimizer], Any] | None = None,
    device: str | torch.device | None = None,
    options: TrainOptions | None = None,
    **train_options: Any,
) -> list[SeedRun]:
    """Train ``models[k]`` with seed ``seeds[k]``, all K at once; each ends as ``fit`` leaves it.

    Equivalent, seed by seed, to ``fit(models[k], data, optimizer=optimizer(models[k]),
    scheduler=schedule(that optimizer), seed=seeds[k], ...)``. A seed whose loss turns non-finite
    stops there, as ``fit`` would: its SeedRun holds the NonFiniteError ``fit`` raises (its model's
    weights are then not meaningful); the other seeds go on.

    Args:
        models: K models of the same structure, each initialized as its seed's run starts.
        optimizer: builds the optimizer of a network, e.g.
            ``lambda net: gradwell.optim.create("adam", net.parameters(), lr=0.01)``; it gets the
            stacked network. A gradwell optimizer's clipnorm or global_clipnorm is taken over and
            applied to each seed on its own.
        schedule: builds a per-step LR scheduler on that optimizer.
        options, train_options: as for ``gradwell.train.fit`` (``epochs``, ``batch_size``, ``loss``,
            ``l1``, ``l2``, ``max_norm``; ``options_problem`` says which others it cannot take).

    >>> from types import SimpleNamespace
    >>> from gradwell import optim
    >>> from gradwell.data import Split
    >>> from gradwell.models import mlp
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> data = SimpleNamespace(train=Split(x, (x[:, 0] > 0).long()))
    >>> models = [mlp(4, 2, hidden=[8], generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    >>> adam = lambda net: optim.create("adam", net.parameters())
    >>> runs = fit_seeds(models, data, seeds=[0, 1], optimizer=adam, epochs=2, batch_size=16)
    >>> [len(run.history.epochs) for run in runs]
    [2, 2]
    """
    options = training_options(options, train_options)
    epochs, batch_size, loss = options.epochs, options.batch_size, options.loss
    if len(models) != len(seeds):
        raise GradwellError(f"got {len(models)} models for {len(seeds)} seeds; give one model per seed")
    device = torch.device(device) if device is not None else next(models[0].parameters()).device
    # what fit seeds its global RNG with: the dropout masks and RReLU slopes of seed s come from it
    rngs = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    stacked = stack([model.to(device) for model in models], rngs).to(device)
    loop = make_loop(stacked, optimizer, schedule, options)
    x, y = data.train.x.to(device), data.train.y.to(device)
    val = getattr(data, "val", None)
    val = (val.x.to(device), val.y.to(device)) if val is not None and len(val.y) > 0 else None
    shuffles = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    runs = [SeedRun(History()) for _ in seeds]
    steps_per_epoch = options.steps_per_epoch(len(x))
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        losses, accuracies, nonfinite = loop.epoch(x, y, batch_size, shuffles, (epoch - 1) * steps_per_epoch)
        logs = {"loss": losses.tolist(), "accuracy": accuracies.tolist()}
        if val is not None:
            val_loss, val_accuracy = evaluate_seeds(stacked, *val, len(seeds), loss)
            logs.update({"val_loss": val_loss.tolist(), "val_accuracy": val_accuracy.tolist()})
        if loss not in CLASSIFICATION:
            logs = {key: value for key, value in logs.items() if "accuracy" not in key}
        record_epoch(runs, logs, nonfinite.tolist(), epoch, loop.optimizer, time.perf_counter() - started)
    unstack_into(stacked, models)
    for run in runs:
        run.history.stop_reason = str(run.error) if run.error else f"completed {epochs} epochs"
    return runs


def record_epoch(
    runs: list[SeedRun],
    logs: dict[str, list[float]],
    nonfinite: list[int],
    epoch: int,
    optimizer: torch.optim.Optimizer,
    seconds: float,
) -> None:
    """Append each running seed's metrics, or end it with fit's error for a non-finite loss."""
    lr = float(optimizer.param_groups[0]["lr"])
    for k, run in enumerate(runs):
        if run.error is not None:
            continue
        if nonfinite[k] >= 0:
            run.error = NonFiniteError(
                f"the training loss became non-finite at step {nonfinite[k]} "
                f"(epoch {epoch}); lower the learning rate or clip the gradients"
            )
            continue
        values = {key: column[k] for key, column in logs.items()}
        run.history.epochs.append({"epoch": epoch, **values, "lr": lr, "time": seconds})
