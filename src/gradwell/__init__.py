"""gradwell: train deep neural networks that actually learn.

The chapter's techniques as one system on plain PyTorch modules and optimizers: initialization
(gradwell.init), activations, batch normalization and folding, gradient clipping, optimizers and
schedules (gradwell.optim), regularization, model builders, data, the training loop
(gradwell.train), transfer learning and pretraining, the stability doctor (gradwell.diagnose) and
honest multi-seed experiments (gradwell.experiment). The names below are the public API; the
subpackages hold the rest.
"""

from gradwell import data, diagnose, experiment, optim, pretrain, train, transfer
from gradwell.activations import (
    ELU,
    GELU,
    SELU,
    ActivationInfo,
    LeakyReLU,
    Mish,
    PReLU,
    ReLU,
    RReLU,
    Sigmoid,
    Swish,
    Tanh,
    get_activation,
    register_activation,
)
from gradwell.clip import clip_by_global_norm_, clip_by_norm_, clip_by_value_
from gradwell.data import Dataset, Split, load, split_by_classes, standardize
from gradwell.diagnose import Monitor, Report, probe, watch
from gradwell.errors import CheckpointError, ConfigError, DataError, GradwellError, NonFiniteError
from gradwell.fold import fold_batchnorm
from gradwell.guidelines import recommend
from gradwell.init import (
    get_initializer,
    glorot_normal_,
    glorot_uniform_,
    he_normal_,
    he_uniform_,
    lecun_normal_,
    lecun_uniform_,
    recommended_init,
    recommended_initializer,
    variance_scaling_,
)
from gradwell.models import cnn, mlp, summary
from gradwell.norm import BatchNorm
from gradwell.optim import SGD, AdaGrad, Adam, AdaMax, AdamW, Nadam, RMSProp
from gradwell.pretrain import RBM, autoencoder, auxiliary, gan, greedy_layerwise
from gradwell.regularize import l1_l2_penalty, max_norm_, mc_dropout_predict
from gradwell.train import Callback, EarlyStopping, History, TrainOptions, evaluate, fit, lr_find
from gradwell.transfer import clone, fine_tune, freeze, layerwise_lr, reuse, unfreeze

__version__ = "0.1.0"

__all__ = [
    "ELU",
    "GELU",
    "RBM",
    "SELU",
    "SGD",
    "ActivationInfo",
    "AdaGrad",
    "AdaMax",
    "Adam",
    "AdamW",
    "BatchNorm",
    "Callback",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Dataset",
    "EarlyStopping",
    "GradwellError",
    "History",
    "LeakyReLU",
    "Mish",
    "Monitor",
    "Nadam",
    "NonFiniteError",
    "PReLU",
    "RMSProp",
    "RReLU",
    "ReLU",
    "Report",
    "Sigmoid",
    "Split",
    "Swish",
    "Tanh",
    "TrainOptions",
    "__version__",
    "autoencoder",
    "auxiliary",
    "clip_by_global_norm_",
    "clip_by_norm_",
    "clip_by_value_",
    "clone",
    "cnn",
    "data",
    "diagnose",
    "evaluate",
    "experiment",
    "fine_tune",
    "fit",
    "fold_batchnorm",
    "freeze",
    "gan",
    "get_activation",
    "get_initializer",
    "glorot_normal_",
    "glorot_uniform_",
    "greedy_layerwise",
    "he_normal_",
    "he_uniform_",
    "l1_l2_penalty",
    "layerwise_lr",
    "lecun_normal_",
    "lecun_uniform_",
    "load",
    "lr_find",
    "max_norm_",
    "mc_dropout_predict",
    "mlp",
    "optim",
    "pretrain",
    "probe",
    "recommend",
    "recommended_init",
    "recommended_initializer",
    "register_activation",
    "reuse",
    "split_by_classes",
    "standardize",
    "summary",
    "train",
    "transfer",
    "unfreeze",
    "variance_scaling_",
    "watch",
]
