"""Training: the loop, its options, training paths, callbacks and checkpoints."""

from gradwell.train.callbacks import Callback, EarlyStopping
from gradwell.train.loop import History, Run, fit
from gradwell.train.losses import LOSSES, evaluate
from gradwell.train.options import TrainOptions

__all__ = ["LOSSES", "Callback", "EarlyStopping", "History", "Run", "TrainOptions", "evaluate", "fit"]
