"""Optimizers and learning-rate schedules of the chapter, as torch.optim subclasses and schedulers.

Each optimizer is a `torch.optim.Optimizer` (state_dict, torch's schedulers and hooks work) with
multi-tensor updates, optional in-optimizer gradient clipping and a capturable mode for CUDA
graphs; see gradwell.optim.base. Create one by name::

    optimizer = create("nesterov", model.parameters(), lr=0.01, global_clipnorm=1.0)
    scheduler = schedule("onecycle", optimizer, max_lr=0.1, total_steps=1000)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch.optim.optimizer import ParamsT

from gradwell.errors import unknown_name
from gradwell.optim.adagrad import AdaGrad
from gradwell.optim.adam import Adam, AdaMax, AdamW, Nadam
from gradwell.optim.base import OPTIONS, TORCH_ELEMENTWISE, GradwellOptimizer, check_arguments, is_elementwise
from gradwell.optim.rmsprop import RMSProp
from gradwell.optim.schedules import SCHEDULES, ClampedOneCycleLR, PiecewiseConstantLR, schedule
from gradwell.optim.sgd import SGD

OPTIMIZERS: dict[str, Callable[..., GradwellOptimizer]] = {
    "sgd": SGD,
    "momentum": partial(SGD, momentum=0.9),  # the chapter's typical friction
    "nesterov": partial(SGD, momentum=0.9, nesterov=True),
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "adam": Adam,
    "adamax": AdaMax,
    "nadam": Nadam,
    "adamw": AdamW,
}


def create(name: str, params: ParamsT, **kwargs: Any) -> GradwellOptimizer:
    """The optimizer `name` from OPTIMIZERS over `params`; `kwargs` override its defaults.

    Bad names and arguments raise GradwellError listing what is valid.

    >>> import torch
    >>> optimizer = create("nesterov", torch.nn.Linear(4, 2).parameters(), lr=0.01, global_clipnorm=1.0)
    >>> group = optimizer.param_groups[0]
    >>> type(optimizer).__name__, group["lr"], group["momentum"], group["nesterov"]
    ('SGD', 0.01, 0.9, True)
    """
    try:
        factory = OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise unknown_name("optimizer", name, OPTIMIZERS) from None
    check_arguments(f"optimizer {name!r}", factory, kwargs, extra=OPTIONS)
    return factory(params, **kwargs)


__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "TORCH_ELEMENTWISE",
    "AdaGrad",
    "AdaMax",
    "Adam",
    "AdamW",
    "ClampedOneCycleLR",
    "GradwellOptimizer",
    "Nadam",
    "PiecewiseConstantLR",
    "RMSProp",
    "create",
    "is_elementwise",
    "schedule",
]
