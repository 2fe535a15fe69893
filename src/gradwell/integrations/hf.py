"""`DoctorCallback`: the stability doctor in Hugging Face's ``transformers.Trainer``.

    callback = DoctorCallback(every=200)
    trainer = transformers.Trainer(model, args, train_dataset=data, callbacks=[callback])
    trainer.train()
    callback.report                      # a gradwell.diagnose.Report, or None if nothing was sampled

Steps are the Trainer's optimizer steps (``state.global_step``): step 0 is measured, then every
`every`-th. A sampled step begins at ``on_step_begin`` and ends at ``on_step_end``, after the
update; with ``gradient_accumulation_steps`` above 1 the first micro-batch's forward and backward
pass is measured and the weight gradients are the accumulated ones. The learning rate is read
right after the optimizer step, before the scheduler changes it. The Trainer hands its callbacks no
per-step loss, so the history's loss is unknown (None); the verdicts do not need it.

Only the main process (``state.is_world_process_zero``) attaches a doctor, to the model the
Trainer passes its callbacks (unwrapped from DistributedDataParallel). Under fp16 the gradients
are divided by the scale of the GradScaler that accelerate's optimizer wrapper holds.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import transformers
from torch import nn
from transformers import TrainerControl, TrainerState, TrainingArguments

from gradwell.diagnose.watch import Doctor
from gradwell.integrations.finish import Settings, finish, gradients

__all__ = ["DoctorCallback"]

log = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DataParallel or DistributedDataParallel, whose submodules run the pass."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (itself an Optimizer): the
    name the fixes quote is the inner one's."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class DoctorCallback(Settings, transformers.TrainerCallback):
    """Trainer callback: the doctor on the model, every `every`-th optimizer step measured;
    `layers` and `tensorboard` as ``gradwell.watch`` takes them. See the module docstring.

    >>> callback = DoctorCallback(every=50)
    >>> callback.doctor is None and callback.report is None
    True
    """

    lr: Any = None  # the sampled step's learning rate, read after its update

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return  # one doctor for the run: the other processes train exactly as without it
        inner = unwrap_optimizer(optimizer)
        scaler = getattr(optimizer, "scaler", None)  # accelerate's wrapper holds the fp16 GradScaler
        self.doctor = Doctor(
            unwrap_model(model),
            every=self.every,
            layers=self.layers,
            tensorboard=self.tensorboard,
            scaler=scaler,
            driven=True,
            optimizer_name=type(inner).__name__ if inner is not None else "",
            gradients=gradients(scaler),
        )
        self.report = None

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.doctor is not None and self.doctor.recorder is None and state.global_step % self.every == 0:
            self.doctor.begin()
            self.lr = None

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.doctor is not None and self.doctor.recorder is not None and optimizer is not None:
            self.lr = optimizer.param_groups[0]["lr"]

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.doctor is None or self.doctor.recorder is None:
            return
        lr = self.lr
        if lr is None and optimizer is not None:  # a transformers without on_optimizer_step
            lr = optimizer.param_groups[0]["lr"]
        self.doctor.end(state.global_step - 1, None, lr)  # global_step counts this update already

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.doctor is not None:
            self.report = finish(self.doctor, log)
