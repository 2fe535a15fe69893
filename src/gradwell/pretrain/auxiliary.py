"""Self-supervised pretraining on an auxiliary task whose labels come free with the inputs.

- "masked": zero a random fraction of each input's features and predict the hidden values from
  the rest (masked modeling, as BERT does with words; Devlin et al., 2019; for tabular features,
  VIME, Yoon et al., 2020). The loss is the squared error on the masked positions only: the
  visible ones would be copied, not predicted.
- "pairs": decide whether two augmented views (noise, masking, a shift) come from the same input
  or from two different inputs. The chapter's example of an auxiliary task (are two pictures of
  the same person?), made class-free: a pair is "same" only when it comes from one input. A
  small head reads [|z1 - z2|, z1 * z2] of the two embeddings (a Siamese network; Bromley et al.,
  1993) and outputs the logit of "same".

Either way the encoder learns features of the inputs without a single label; ``auxiliary``
returns it, and the head is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from gradwell.errors import GradwellError, check_finite, unknown_name
from gradwell.pretrain.unlabeled import Unlabeled, fit_unsupervised, unlabeled_tensor
from gradwell.train import Callback

TASKS = ("masked", "pairs")


def random_mask(x: Tensor, fraction: float, generator: Generator) -> Tensor:
    """A boolean mask shaped like `x`, each entry True with probability `fraction`."""
    return torch.rand(x.shape, generator=generator, device=x.device) < fraction


def random_shift(x: Tensor, max_shift: int, generator: Generator) -> Tensor:
    """Each sample rolled along its last axis by its own shift in [-max_shift, max_shift]."""
    if max_shift == 0:
        return x
    length = x.shape[-1]
    shifts = torch.randint(-max_shift, max_shift + 1, (len(x),), generator=generator, device=x.device)
    index = (torch.arange(length, device=x.device) - shifts[:, None]) % length  # (N, L)
    index = index.view(len(x), *([1] * (x.dim() - 2)), length).expand_as(x)
    return x.gather(-1, index)


class MaskedModeling(nn.Module):
    """Encoder + Linear head predicting every input feature from a masked input.

    Returns (predictions, mask), both (N, features); ``masked_loss`` reads them. Masks are drawn
    from `generator`, on the inputs' device.
    """

    def __init__(
        self, encoder: nn.Module, width: int, features: int, fraction: float, generator: Generator
    ) -> None:
        super().__init__()
        self.encoder, self.head, self.fraction = encoder, nn.Linear(width, features), fraction
        self.generator = generator

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mask = random_mask(x, self.fraction, self.generator)
        predictions = self.head(self.encoder(x.masked_fill(mask, 0.0)))  # 0: the mean of standardized data
        return predictions, mask.reshape(len(x), -1)


def masked_loss(output: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
    """Mean squared error over the masked positions only."""
    predictions, mask = output
    errors = (predictions - x.reshape(len(x), -1)) ** 2 * mask
    return errors.sum() / mask.sum().clamp(min=1)


class PairDiscrimination(nn.Module):
    """Encoder + Linear head telling two views of one input from views of two inputs.

    Each batch gives N positive pairs (two views of each input) and N negative pairs (a view of
    input i with a view of input i + 1, cyclically). Returns (logits, labels), both (2N,). A batch
    of one (the last, partial one) has no other input to pair with: it gives its positive pair
    alone, (1,), rather than a "different inputs" pair made of the same input. Views are drawn from
    `generator`, on the inputs' device.
    """

    def __init__(
        self,
        encoder: nn.Module,
        width: int,
        noise: float,
        fraction: float,
        max_shift: int,
        generator: Generator,
    ) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(2 * width, 1)
        self.noise, self.fraction, self.max_shift, self.generator = noise, fraction, max_shift, generator

    def view(self, x: Tensor) -> Tensor:
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        x = random_shift(x, self.max_shift, self.generator) + self.noise * noise
        return x.masked_fill(random_mask(x, self.fraction, self.generator), 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = self.encoder(torch.cat([self.view(x), self.view(x)])).chunk(2)  # (N, width) each
        n = len(x) if len(x) > 1 else 0  # negative pairs: a single input has no other to pair with
        others = z2.roll(1, 0)[:n]  # (n, width)

        def logit(a: Tensor, b: Tensor) -> Tensor:
            return self.head(torch.cat([(a - b).abs(), a * b], -1)).squeeze(-1)

        logits = torch.cat([logit(z1, z2), logit(z1[:n], others)])  # (N + n,)
        labels = torch.cat([torch.ones(len(x), device=x.device), torch.zeros(n, device=x.device)])
        return logits, labels


def pair_loss(output: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
    logits, labels = output
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


@torch.no_grad()
def embedding_width(encoder: nn.Module, x: Tensor) -> int:
    """The encoder's output size, from one pass over two samples in eval mode (modes restored)."""
    modes = {module: module.training for module in encoder.modules()}
    try:
        encoder.eval()
        out = encoder(x[:2].to(next(encoder.parameters()).device))
    finally:
        for module, training in modes.items():
            module.training = training
    if out.dim() != 2:
        raise GradwellError(
            f"the encoder must output (N, features) embeddings; it gives shape {tuple(out.shape)}"
        )
    return out.shape[1]


def auxiliary(
    encoder: nn.Module,
    unlabeled: Unlabeled,
    *,
    task: str = "masked",
    epochs: int,
    mask_fraction: float = 0.25,
    noise: float = 0.1,
    max_shift: int = 0,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
) -> nn.Module:
    """Pretrain `encoder` on the self-supervised `task`; return it (trained in place).

    Args:
        encoder: any module mapping a batch of inputs to (N, width) embeddings, e.g. an mlp's
            hidden layers (``mlp(...)[:-1]``).
        unlabeled: a float tensor (N, *features), a Split or a Dataset (its training inputs);
            standardized inputs suit both tasks, which write 0 (the mean) into masked features.
        task: "masked" or "pairs" (see the module docstring).
        mask_fraction: the share of features zeroed, 0.25: BERT masks 15% of the tokens, VIME
            30% of tabular features; a few of 40 features (MNIST-1D) leave enough to predict from.
        noise, max_shift: the pair views' Gaussian noise std (inputs of unit variance) and
            largest circular shift along the last axis (0: none; a few steps suit 1-D signals).
        lr, batch_size, optimizer: Adam at 1e-3 in batches of 64, Keras's defaults.
        seed: seeds the head's initialization, the masks, noise and shuffling.
        callbacks: ``gradwell.train`` callbacks; the epoch logs carry the auxiliary loss.

    >>> x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))  # standardized, unlabeled
    >>> encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    >>> trained = auxiliary(encoder, x, task="masked", epochs=1)
    >>> trained is encoder, trained(x).shape
    (True, torch.Size([64, 16]))
    """
    x = unlabeled_tensor(unlabeled)
    if task not in TASKS:
        raise unknown_name("auxiliary task", task, TASKS)
    fraction = check_finite("mask_fraction", mask_fraction, low=0.0, high=1.0, high_open=True)
    if task == "masked" and fraction == 0:
        raise GradwellError("the masked task needs mask_fraction above 0: nothing would be predicted")
    noise = check_finite("noise", noise, low=0.0)
    if not isinstance(max_shift, int) or isinstance(max_shift, bool) or not 0 <= max_shift < x.shape[-1]:
        raise GradwellError(
            f"max_shift must be an int in 0..{x.shape[-1] - 1} (the last axis); got {max_shift!r}"
        )
    width = embedding_width(encoder, x)
    reference = next(encoder.parameters())
    generator = torch.Generator(device=reference.device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the head's initialization, without touching the caller's RNG
        if task == "masked":
            model, loss = MaskedModeling(encoder, width, x[0].numel(), fraction, generator), masked_loss
        else:
            model, loss = PairDiscrimination(encoder, width, noise, fraction, max_shift, generator), pair_loss
    model.to(reference.device, reference.dtype)
    fit_unsupervised(
        model, x, x, loss, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
        seed=seed, callbacks=callbacks, progress=progress,
    )  # fmt: skip
    return encoder
