"""Training: the loop, its options, training paths, callbacks and checkpoints."""

from gradwell.train.callbacks import Callback, EarlyStopping
from gradwell.train.loop import History, Run, fit
from gradwell.train.losses import LOSSES, evaluate
from gradwell.train.lr_find import LRSearch, lr_find
from gradwell.train.options import TrainOptions

__all__ = [
    "LOSSES", "Callback", "EarlyStopping", "History", "LRSearch", "Run", "TrainOptions", "evaluate", "fit",
    "lr_find",
]  # fmt: skip
