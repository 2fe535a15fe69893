"""gradwell: train deep neural networks that actually learn."""

from gradwell.activations import (
    ELU,
    GELU,
    SELU,
    LeakyReLU,
    Mish,
    PReLU,
    ReLU,
    RReLU,
    Sigmoid,
    Swish,
    Tanh,
    get_activation,
)
from gradwell.clip import clip_by_global_norm_, clip_by_norm_, clip_by_value_
from gradwell.errors import CheckpointError, ConfigError, DataError, GradwellError, NonFiniteError
from gradwell.init import (
    get_initializer,
    glorot_normal_,
    glorot_uniform_,
    he_normal_,
    he_uniform_,
    lecun_normal_,
    lecun_uniform_,
    recommended_init,
    variance_scaling_,
)

__version__ = "0.1.0"

__all__ = [
    "ELU",
    "GELU",
    "SELU",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GradwellError",
    "LeakyReLU",
    "Mish",
    "NonFiniteError",
    "PReLU",
    "RReLU",
    "ReLU",
    "Sigmoid",
    "Swish",
    "Tanh",
    "__version__",
    "clip_by_global_norm_",
    "clip_by_norm_",
    "clip_by_value_",
    "get_activation",
    "get_initializer",
    "glorot_normal_",
    "glorot_uniform_",
    "he_normal_",
    "he_uniform_",
    "lecun_normal_",
    "lecun_uniform_",
    "recommended_init",
    "variance_scaling_",
]
