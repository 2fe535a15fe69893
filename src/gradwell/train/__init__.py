"""Training: the loop, callbacks and checkpoints."""

from gradwell.train.callbacks import Callback, EarlyStopping
from gradwell.train.loop import LOSSES, History, Run, evaluate, fit

__all__ = ["LOSSES", "Callback", "EarlyStopping", "History", "Run", "evaluate", "fit"]
