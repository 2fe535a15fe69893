"""The conditions under which a SELU network self-normalizes, checked on a model.

Klambauer et al. (2017) prove that a stack of dense SELU layers keeps its outputs near mean 0
and variance 1 when the weights are LeCun-initialized and the network is sequential with
standardized inputs; batch normalization, regular dropout and l1/l2 penalties break it. The
builders (``gradwell.models``) warn about what a model breaks, and the training loop about
penalties, with a ``SelfNormalizationWarning``. This module sits in the toolbox so that the
training loop can use it without knowing the builders.
"""

from __future__ import annotations

import warnings

from torch import nn

from gradwell.init import INITIALIZERS, Initializer
from gradwell.norm import BatchNorm

LECUN = (INITIALIZERS["lecun_normal"], INITIALIZERS["lecun_uniform"])


class SelfNormalizationWarning(UserWarning):
    """A SELU network breaks a condition under which it self-normalizes.

    A UserWarning, so it shows once per place by default; turn it into an error to catch it:

    >>> import warnings
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.SELU())
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", SelfNormalizationWarning)
    ...     warn_if_penalties_break_self_normalization(model, l1=0.0, l2=1e-4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gradwell.selfnorm.SelfNormalizationWarning: l1=0, l2=0.0001: weight penalties break SELU's ...
    """


def check_self_normalizing(
    model: nn.Module, l1: float = 0.0, l2: float = 0.0, init: str | Initializer | None = None
) -> list[str]:
    """The conditions of self-normalization that a SELU `model` breaks, as messages (empty if none).

    Klambauer et al. (2017) prove that a stack of dense SELU layers keeps its outputs near mean 0
    and variance 1 when the weights are LeCun-initialized (variance 1/fan_in; the chapter asks for
    LeCun normal, LeCun uniform has the same variance) and the network is sequential with
    standardized inputs. Batch normalization, regular dropout and l1/l2 penalties break it. Checked
    here: `init` (a name or initializer, when known), BatchNorm layers, non-alpha dropout with a
    positive rate, and `l1`/`l2`. Not checkable: skip connections and unstandardized inputs.
    A model without SELU gives an empty list.

    >>> from torch import nn
    >>> selu = nn.Sequential(nn.Linear(4, 4), nn.SELU(), nn.AlphaDropout(0.1), nn.Linear(4, 2))
    >>> check_self_normalizing(selu, init="lecun_normal")
    []
    >>> for problem in check_self_normalizing(selu, l2=1e-4, init="he_normal"):
    ...     print(problem)
    init 'he_normal' is not LeCun normal; SELU self-normalizes with variance 1/fan_in
    l1=0, l2=0.0001: weight penalties break SELU's self-normalization; regularize with AlphaDropout instead
    >>> check_self_normalizing(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.5)))
    []
    """
    if not any(isinstance(m, nn.SELU) for m in model.modules()):
        return []
    problems = []
    lecun = init in (None, "auto", "lecun_normal", "lecun_uniform", *LECUN)
    if not lecun and (isinstance(init, str) or init in INITIALIZERS.values()):
        problems.append(f"init {init!r} is not LeCun normal; SELU self-normalizes with variance 1/fan_in")
    if any(isinstance(m, (BatchNorm, nn.modules.batchnorm._BatchNorm)) for m in model.modules()):
        problems.append("batch normalization breaks SELU's self-normalization; drop batchnorm")
    regular = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
    if any(isinstance(m, regular) and m.p > 0 for m in model.modules()):
        problems.append("regular dropout breaks SELU's self-normalization; use AlphaDropout")
    if l1 > 0 or l2 > 0:
        problems.append(penalty_problem(l1, l2))
    return problems


def penalty_problem(l1: float, l2: float) -> str:
    return (
        f"l1={l1:g}, l2={l2:g}: weight penalties break SELU's self-normalization; "
        "regularize with AlphaDropout instead"
    )


def warn_if_not_self_normalizing(model: nn.Module, init: str | Initializer) -> None:
    for problem in check_self_normalizing(model, init=init):
        warnings.warn(problem, SelfNormalizationWarning, stacklevel=3)


def warn_if_penalties_break_self_normalization(model: nn.Module, l1: float, l2: float) -> None:
    """What l1/l2 add to a SELU model's problems (the builder warned about the model's own)."""
    if (l1 > 0 or l2 > 0) and any(isinstance(m, nn.SELU) for m in model.modules()):
        warnings.warn(penalty_problem(l1, l2), SelfNormalizationWarning, stacklevel=3)
