"""Models: the builders (``mlp``, ``cnn``), a user's own factory (``build_custom``, for
``model.kind = "python:module:factory"``), their Keras-style ``summary``, and the SELU
self-normalization check the builders apply (from ``gradwell.selfnorm``).

The names imported ``as`` themselves are not public API: other gradwell modules (transfer,
pretrain.greedy, train.loop) import them from here.
"""

from gradwell.models.builders import BATCHNORM_POSITIONS, cnn, hidden_blocks, mlp
from gradwell.models.builders import initialize as initialize
from gradwell.models.builders import output_layer as output_layer
from gradwell.models.custom import build_custom, import_factory
from gradwell.models.summaries import Summary, SummaryRow, summary
from gradwell.selfnorm import SelfNormalizationWarning, check_self_normalizing
from gradwell.selfnorm import (
    warn_if_penalties_break_self_normalization as warn_if_penalties_break_self_normalization,
)

__all__ = [
    "BATCHNORM_POSITIONS",
    "SelfNormalizationWarning",
    "Summary",
    "SummaryRow",
    "build_custom",
    "check_self_normalizing",
    "cnn",
    "hidden_blocks",
    "import_factory",
    "mlp",
    "summary",
]
