"""The fused step's layers: each a forward that keeps what its backward needs, and that backward by hand.

A layer's ``forward(a)`` returns its output and what it saves; ``backward(grad, saved, needs_input)``
writes the gradients of its parameters into their views of the step's flat gradient buffer and
returns the gradient of its input (None when `needs_input` is false: the first layer's input is
the data). Every layer is checked against autograd in float64 (tests/test_fused.py).

Batch normalization, for a batch x of N rows, per feature (Ioffe and Szegedy, 2015):

    mu = mean(x), var = mean((x - mu)^2), r = 1 / sqrt(var + eps), x_hat = (x - mu) r
    forward:  y = gamma x_hat + beta
    backward: dx = gamma r (dy - (dbeta + x_hat dgamma) / N),  dgamma = sum(dy x_hat),  dbeta = sum(dy)

runs through torch's own kernels in both directions (``native_batch_norm`` and
``native_batch_norm_backward``), the ones autograd runs for the eager layer: the results are the
eager layer's bit for bit, overflow included. (A formula written out by hand computed the same
function in another order, from x_hat where torch's kernel uses x - mu, and a diverging run then
trained on with a NaN validation loss where the eager one stops at the step and layer.) The moving
statistics are updated from the same batch statistics by the function the eager layer's own update
calls (``norm.update_moving_statistics_``), for all layers at once after the forward pass
(`MovingStatistics`), so they equal the eager layer's.

Dropout and AlphaDropout draw their masks as torch's CPU kernels do
(``empty_like(x).bernoulli_(1 - p)``, then the same scaling), from the same generator, so the same
seed gives the same masks as the eager modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwell.activations import FusedKernel
from gradwell.norm import BatchNorm, update_moving_statistics_

ALPHA = 1.7580993408473766  # -SELU's lambda * alpha: AlphaDropout's saturation value, as torch's kernel


def cross_entropy_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """F.cross_entropy(logits, labels) (mean over the batch) and its gradient with respect to the
    logits, softmax(logits) - onehot(labels) over N, by the kernels autograd runs for it, without
    autograd: bit for bit its loss and gradient, in about a quarter of autograd's time for a batch of
    64 (benchmarks/bench_step_parts.py).

    >>> logits, labels = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 2, 1, 2])
    >>> loss, grad = cross_entropy_with_grad(logits.detach(), labels)
    >>> reference = F.cross_entropy(logits, labels)
    >>> torch.equal(loss, reference.detach()), torch.equal(grad, torch.autograd.grad(reference, logits)[0])
    (True, True)
    """
    ops = torch.ops.aten
    mean, ignore_index = 1, -100  # F.cross_entropy's defaults: reduction "mean", ignore_index -100
    log_p = ops._log_softmax(logits, 1, False)
    loss, total_weight = ops.nll_loss_forward(log_p, labels, None, mean, ignore_index)
    grad_log_p = ops.nll_loss_backward(
        torch.ones_like(loss), log_p, labels, None, mean, ignore_index, total_weight
    )
    return loss, ops._log_softmax_backward_data(grad_log_p, log_p, 1, logits.dtype)


def add_penalty_gradient_(weight_grad: Tensor, weight: Tensor, l1: float, l2: float) -> None:
    """Add the l1/l2 penalty's gradient: l1 sign(W) (autograd's d|W|, 0 at 0) + 2 l2 W."""
    if l1:
        weight_grad.add_(weight.sign(), alpha=l1)
    if l2:
        weight_grad.add_(weight, alpha=2 * l2)


# multiply-adds per layer (batch x out x in) below which one bmm over a group's layers beats one mm
# per layer (benchmarks/bench_step_parts.py, 2-core CPU: 1.6x to 1.7x for 99 layers at 32 x 100 x
# 100, 0.96x at 64 x 128 x 128, 0.86x to 0.96x at 64 x 256 x 256, where stacking the inputs costs
# more than the calls it saves)
BATCHED_BELOW = 2_000_000


# multiply-adds of a Linear layer's product (batch x in x out) below which MKL's split of the product
# over the threads, and ATen's of BatchNorm's channels, cost more than the second core gives
# (benchmarks/bench_serial_layers.py, 2-core CPU: one thread 1.0x to 1.5x as fast for MLPs of 0.1
# to 1.6 million per product, 0.7x to 1.1x at 2 to 8 million; see BENCHMARKS.md)
SERIAL_BELOW = 2_000_000


# multiply-adds of a float32 product z = x W^T (+ b) from which oneDNN's kernel beats MKL's, the one
# torch's matmul calls on a CPU (benchmarks/bench_products.py, AMD EPYC 2-core, where MKL reports its
# generic code path, not AVX-512: oneDNN 1.2x to 1.8x as fast at 3.3 and 4.2 million, up to 2.2x at 34
# million; below, 0.5x to 1.2x on two threads, where its call costs more than its arithmetic saves,
# and though 1.0x to 1.5x on one thread at 1.3 to 2.1 million, the SELU and ReLU nets' one-thread
# steps gained nothing measurable from their 784-input first layers' 2.5 million on oneDNN)
ONEDNN_FROM = 3_000_000


def onednn_linear() -> Callable[..., Tensor] | None:
    """oneDNN's linear kernel, as torch.compile's CPU code calls it for a Linear layer:
    ``(x, W, b or None, "none", [], "") -> x W^T + b``; None where torch was built without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def runs_serial(products: list[int]) -> bool:
    """Whether a network whose Linear layers' products have these multiply-adds trains faster on one
    thread: when at least half of its multiply-adds are in products below SERIAL_BELOW, so that a
    784-input first layer does not decide for the chapter's 99 hidden 100 x 100 layers.

    >>> runs_serial([32 * 784 * 100] + [32 * 100 * 100] * 99), runs_serial([64 * 256 * 256] * 5)
    (True, False)
    """
    small = sum(work for work in products if work < SERIAL_BELOW)
    return 2 * small >= sum(products)


@contextmanager
def one_thread(active: bool = True) -> Iterator[None]:
    """torch's number of threads set to 1 inside (when `active`), and set back on exit, an error
    included.

    >>> threads = torch.get_num_threads()
    >>> with one_thread():
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == threads
    True
    """
    threads = torch.get_num_threads()
    if not active or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class WeightGradients:
    """The weight and bias gradients of G same-shaped Linear layers, dW_i = dz_i^T a_i and
    db_i = sum(dz_i), as one batched product at the end of the backward pass, into the layers'
    contiguous blocks of the flat gradient buffer.

    No dW is needed before the backward pass ends, so each layer only hands over its dz and its
    input. For small layers, where each call costs more than its arithmetic, one ``bmm`` over the
    stacked layers then replaces G matrix products (the chapter's 99 hidden 100 x 100 layers at
    batch 32: one kernel instead of 99); larger ones (`takes`) compute their own as they go.
    """

    def __init__(
        self, weights: Tensor, weight_grads: Tensor, bias_grads: Tensor | None, l1: float, l2: float
    ) -> None:
        # (G, out, in) views of the parameters and of their gradients, (G, out) of the bias gradients
        self.weights, self.weight_grads, self.bias_grads = weights, weight_grads, bias_grads
        self.l1, self.l2 = l1, l2
        self.layer_size = weights[0].numel()  # read per layer and step: no view of `weights` each time
        self.pending: list[tuple[Tensor, Tensor] | None] = [None] * len(weights)

    def takes(self, grad: Tensor) -> bool:
        """Whether layers of this shape at this batch size are faster batched (BATCHED_BELOW)."""
        return grad.shape[0] * self.layer_size < BATCHED_BELOW

    def keep(self, index: int, grad: Tensor, a: Tensor) -> None:
        self.pending[index] = grad, a

    def write(self) -> None:
        """Write the gradients of the layers handed over (all of them, or none: same shape, same batch)."""
        if self.pending[0] is None:
            return
        grads, inputs = zip(*self.pending, strict=True)
        self.pending = [None] * len(self.pending)
        stacked = torch.stack(grads)
        torch.bmm(stacked.transpose(1, 2), torch.stack(inputs), out=self.weight_grads)
        add_penalty_gradient_(self.weight_grads, self.weights, self.l1, self.l2)
        if self.bias_grads is not None:
            torch.sum(stacked, 1, out=self.bias_grads)


class LinearLayer:
    """z = a W^T + b; dW = dz^T a (+ the l1/l2 penalty's gradient), db = sum(dz), da = dz W.

    z and da are products by oneDNN from ONEDNN_FROM multiply-adds in float32, else by MKL through
    torch's own F.linear (oneDNN has no float64 kernel): the same function, summed in another order.
    A layer in a `WeightGradients` group (at `index`) hands dz and a to it instead, when it takes them.
    """

    def __init__(
        self,
        linear: nn.Linear,
        grads: dict[int, Tensor],
        l1: float,
        l2: float,
        group: tuple[WeightGradients, int] | None = None,
    ) -> None:
        self.weight, self.bias = linear.weight, linear.bias
        self.weight_grad = grads[id(linear.weight)]
        self.bias_grad = grads[id(linear.bias)] if linear.bias is not None else None
        self.l1, self.l2, self.group = l1, l2, group
        self.onednn = onednn_linear() if linear.weight.dtype == torch.float32 else None

    def product(self, batch: int) -> int:
        """The multiply-adds of this layer's product at this batch size."""
        return batch * self.weight.numel()

    def by_onednn(self, batch: int) -> bool:
        """Whether this layer's products at this batch size are oneDNN's (ONEDNN_FROM)."""
        return self.onednn is not None and self.product(batch) >= ONEDNN_FROM

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor]:
        if self.by_onednn(len(a)):
            return self.onednn(a, self.weight, self.bias, "none", [], ""), a
        return F.linear(a, self.weight, self.bias), a

    def backward(self, grad: Tensor, a: Tensor, needs_input: bool) -> Tensor | None:
        if self.group is not None and self.group[0].takes(grad):
            self.group[0].keep(self.group[1], grad, a)
        else:
            torch.mm(grad.t(), a, out=self.weight_grad)
            add_penalty_gradient_(self.weight_grad, self.weight, self.l1, self.l2)
            if self.bias_grad is not None:
                torch.sum(grad, 0, out=self.bias_grad)
        if not needs_input:
            return None
        if self.by_onednn(len(grad)):
            return self.onednn(grad, self.weight.t(), None, "none", [], "")
        return grad.mm(self.weight)


class ActivationLayer:
    """An elementwise activation through its record's kernel (torch's own backward kernels), and
    the gradient of what it learns (PReLU's alpha, a learnable Swish's beta)."""

    def __init__(self, kernel: FusedKernel, grads: dict[int, Tensor]) -> None:
        self.activation, self.activation_backward, self.needs_z = (
            kernel.forward,
            kernel.backward,
            kernel.needs_z,
        )
        self.parameter_grad = kernel.parameter_grad
        self.grad_view = grads[id(kernel.parameter)] if kernel.parameter is not None else None

    def forward(self, z: Tensor) -> tuple[Tensor, tuple[Tensor | None, Tensor]]:
        a = self.activation(z)  # may work in place: z is a fresh output that nothing else keeps
        return a, (z if self.needs_z else None, a)

    def backward(self, grad: Tensor, saved: tuple[Tensor | None, Tensor], needs_input: bool) -> Tensor:
        if self.grad_view is not None:
            self.grad_view.copy_(self.parameter_grad(grad, *saved))
        return self.activation_backward(grad, *saved)


class MovingStatistics:
    """The moving averages of the fused step's BatchNorm layers, updated together after the forward.

    Each layer hands over its batch statistics as it runs. Then one multi-tensor multiply turns the
    unbiased variances into biased ones, and one multi-tensor lerp (norm.update_moving_statistics_)
    updates every layer's mean and variance: two kernels per step instead of three per layer, with
    the results of the eager layers' own updates, bit for bit. The training forward reads no moving
    statistic, so the later update changes nothing it computes.
    """

    def __init__(self, norms: list[BatchNorm]) -> None:
        self.norms = norms  # the BatchNorm layers in the order they run
        self.kept: list[tuple[Tensor, Tensor, int]] = []  # (mean, unbiased variance, values per feature)

    def keep(self, mean: Tensor, unbiased: Tensor, count: int) -> None:
        self.kept.append((mean, unbiased, count))

    def update(self) -> None:
        """Update every layer's moving statistics from what the forward pass handed over."""
        if not self.kept:
            return
        means, unbiased, counts = zip(*self.kept, strict=True)
        self.kept = []
        biased = torch._foreach_mul(list(unbiased), [(n - 1) / n for n in counts])
        moving = [buffer for norm in self.norms for buffer in (norm.running_mean, norm.running_var)]
        batch = [value for pair in zip(means, biased, strict=True) for value in pair]
        momenta = [momentum for norm in self.norms for momentum in (norm.momentum, norm.momentum)]
        update_moving_statistics_(moving, batch, momenta)


class BatchNormLayer:
    """gradwell's BatchNorm over the features of a (batch, features) input, in training mode."""

    def __init__(self, norm: BatchNorm, grads: dict[int, Tensor], moving: MovingStatistics) -> None:
        self.norm, self.eps, self.moving = norm, norm.eps, moving
        self.weight, self.bias = norm.weight, norm.bias
        self.weight_grad = grads[id(norm.weight)] if norm.weight is not None else None
        self.bias_grad = grads[id(norm.bias)] if norm.bias is not None else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        count = self.norm.values_per_feature(x, (1,))  # one row is refused, as by the eager layer
        # as the eager layer calls torch's kernel: the batch's mean and unbiased variance written into
        # scratch buffers (momentum 1), the mean and 1 / sqrt(var + eps) returned for the backward
        mean, unbiased = torch.zeros_like(self.norm.running_mean), torch.zeros_like(self.norm.running_var)
        y, saved_mean, rstd = torch.native_batch_norm(
            x, self.weight, self.bias, mean, unbiased, True, 1.0, self.eps
        )
        self.moving.keep(mean, unbiased, count)
        return y, (x, saved_mean, rstd)  # y is fresh: an in-place activation after it leaves x alone

    def backward(
        self, grad: Tensor, saved: tuple[Tensor, Tensor, Tensor], needs_input: bool
    ) -> Tensor | None:
        x, saved_mean, rstd = saved
        wanted = [needs_input, self.weight_grad is not None, self.bias_grad is not None]
        dx, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            grad, x, self.weight, None, None, saved_mean, rstd, True, self.eps, wanted
        )
        if self.weight_grad is not None:
            self.weight_grad.copy_(dgamma)
        if self.bias_grad is not None:
            self.bias_grad.copy_(dbeta)
        return dx


class DropoutLayer:
    """y = a * mask / (1 - p), mask ~ Bernoulli(1 - p); da = dy * mask / (1 - p)."""

    def __init__(self, p: float) -> None:
        self.keep = 1.0 - p

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.empty_like(a).bernoulli_(self.keep).div_(self.keep)
        return a * noise, noise

    def backward(self, grad: Tensor, noise: Tensor, needs_input: bool) -> Tensor | None:
        return grad * noise if needs_input else None


def alpha_dropout_affine(keep: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """AlphaDropout's (A keep, B(keep)) for a 0/1 mask `keep` (overwritten), so that the output is
    x * A keep + B(keep), computed as torch's kernel computes them (the seed-batched path too)."""
    scale = 1.0 / math.sqrt((ALPHA * ALPHA * p + 1) * (1 - p))
    shift = keep.add(-1).mul_(ALPHA * scale).add_(ALPHA * scale * p)
    return keep.mul_(scale), shift


class AlphaDropoutLayer:
    """AlphaDropout (Klambauer et al., 2017): dropped units set to SELU's saturation -lambda*alpha,
    then an affine map A x + B that keeps the mean and variance: y = a * (A mask) + B(mask)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor]:
        noise, shift = alpha_dropout_affine(torch.empty_like(a).bernoulli_(1 - self.p), self.p)
        return a * noise + shift, noise

    def backward(self, grad: Tensor, noise: Tensor, needs_input: bool) -> Tensor | None:
        return grad * noise if needs_input else None


Layer = LinearLayer | ActivationLayer | BatchNormLayer | DropoutLayer | AlphaDropoutLayer
