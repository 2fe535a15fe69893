"""One training step: forward, loss, backward, optimizer update, max-norm.

Gradient clipping is the optimizer's business (gradwell's optimizers take ``clipvalue``,
``clipnorm`` or ``global_clipnorm``), so the step stays the same whatever the clipping.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gradwell.regularize import l1_l2_penalty, max_norm_

Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def make_step(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_norm: float | None = None,
    accuracy: bool = True,
) -> Step:
    """A function (x, y) -> (loss, number of correct predictions), both detached on the device.

    The loss returned is the data loss; the l1/l2 penalty is added only to what is differentiated.
    """
    penalize = l1 > 0 or l2 > 0

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        optimizer.zero_grad(set_to_none=True)
        output = model(x)
        loss = loss_fn(output, y)
        objective = loss + l1_l2_penalty(model, l1, l2) if penalize else loss
        objective.backward()
        optimizer.step()
        if max_norm is not None:
            max_norm_(model, max_norm)
        hits = (output.argmax(-1) == y).sum() if accuracy else torch.zeros((), dtype=torch.int64)
        return loss.detach(), hits

    return step
