"""The chapter's claims, each an experiment on built-in data with a verdict from the data.

Each claim trains a few configs (its "arms") on the same seeds, then judges one or more paired
comparisons ("parts") from the statistics of ``gradwell.experiment.stats``. Setups follow the
chapter and were fixed before the results were seen; none is tuned until it "holds". A part's
gain is A - B in the direction where the metric improves, and its verdict is:

    better     holds: A better than B (paired t-test at 0.05 and a 95% CI excluding 0);
               does not hold here: B better than A; otherwise inconclusive
    at_least   A matches or beats B: holds when the CI of the gain lies above -margin;
               does not hold here when B is better; otherwise inconclusive
    similar    holds when the CI of the difference lies inside (-margin, margin); does not hold
               here when the difference is significant and larger than the margin
    no_gain    holds when the CI of the gain lies below +margin; does not hold here when A is
               better; otherwise inconclusive

A claim with several parts holds when all hold ("all": an intersection of hypotheses, tested at
0.05 each with no correction needed) and does not hold when one does not; a claim satisfied by
any of its parts ("any") compares Holm-adjusted p-values. "Inconclusive" means these seeds do
not settle it, not that the claim is false.

Scales: "full" (10 seeds, every claim's own epochs, 5000 MNIST-1D samples: within 15 minutes
on 2 cores), "quick" (5 seeds, a quarter of the epochs, 3000 samples: within 2 minutes; weaker
evidence, more "inconclusive") and "smoke", a tiny scale for tests only (3 seeds, 1 epoch,
networks capped at depth 2 and width 16), whose verdicts mean nothing. The setups below are
described at the full scale.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradwell import config as configs
from gradwell import models, optim
from gradwell.config import Config
from gradwell.data import Dataset, Split
from gradwell.errors import unknown_name
from gradwell.experiment.runner import (
    Arm,
    Evaluate,
    Results,
    dataset_of,
    higher_is_better,
    pool,
    run,
    with_seed,
)
from gradwell.experiment.stats import Paired, holm, paired, summarize
from gradwell.regularize import mc_dropout_predict

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold here", "inconclusive"
EXPECTATIONS = ("better", "at_least", "similar", "no_gain")


@dataclass(frozen=True)
class Scale:
    """How big the experiments are: seeds, MNIST-1D samples, epochs and network size."""

    name: str
    seeds: int
    samples: int  # MNIST-1D samples: 72% train, 8% validation, 20% test
    epoch_factor: float  # times each claim's full epochs (at least 1)
    max_depth: int | None = None
    max_width: int | None = None
    mc_samples: int = 100
    few_labels: int = 200  # the chapter's 200 labeled examples of task B

    def epochs(self, full: int) -> int:
        return max(1, round(full * self.epoch_factor))

    def depth(self, full: int) -> int:
        return min(full, self.max_depth or full)

    def width(self, full: int) -> int:
        return min(full, self.max_width or full)


SCALES = {
    "full": Scale("full", seeds=10, samples=5000, epoch_factor=1.0),
    "quick": Scale("quick", seeds=5, samples=3000, epoch_factor=0.25, mc_samples=30),
    "smoke": Scale(
        "smoke",
        seeds=3,
        samples=600,
        epoch_factor=0.0,
        max_depth=2,
        max_width=16,
        mc_samples=4,
        few_labels=40,
    ),
}


@dataclass(frozen=True)
class Part:
    """One comparison of a claim: A against B on `metric` (B on `metric_b` when given)."""

    a: str
    b: str
    expect: str
    metric: str
    margin: float = 0.0
    metric_b: str | None = None
    names: tuple[str, str] | None = None  # display names, when A and B are metrics of one arm

    @property
    def labels(self) -> tuple[str, str]:
        return self.names or (self.a, self.b)

    def describe(self) -> str:
        """The expectation in words, e.g. "he better than glorot on test_accuracy"."""
        a, b = self.labels
        margin = f" (margin {self.margin:g})" if self.margin else ""
        return {
            "better": f"{a} better than {b}",
            "at_least": f"{a} matches or beats {b}{margin}",
            "similar": f"{a} and {b} within ±{self.margin:g}",
            "no_gain": f"{a} no better than {b}{margin}",
        }[self.expect] + f" on {self.metric}"


@dataclass(frozen=True)
class Claim:
    """A claim of the chapter as an experiment: the arms to train and the parts to judge."""

    name: str
    statement: str
    setup: str
    arms: Callable[[Scale], dict[str, Arm]]
    parts: tuple[Part, ...]
    combine: str = "all"  # "all" parts must hold, or "any" one of them
    failed_value: float | None = None  # the score of a failed (diverged) run; None leaves it out
    evaluate: Callable[[Scale], Evaluate] | None = None


@dataclass
class ClaimResult:
    number: int
    claim: Claim
    scale: Scale
    verdict: str
    parts: list[tuple[Part, Paired, str]]
    results: Results
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        head, comparison, _ = self.parts[0]
        return {
            "number": self.number,
            "name": self.claim.name,
            "statement": self.claim.statement,
            "setup": self.claim.setup,
            "verdict": self.verdict,
            "expected": "; ".join(part.describe() for part, _, _ in self.parts),
            "metric": head.metric,
            "higher_is_better": comparison.higher_is_better,
            "n_seeds": len(self.results.seeds),
            "configs": self.configs(),
            "difference": {"mean": comparison.mean_difference, "ci": comparison.ci, "n": comparison.n},
            "p_value": comparison.p_t,
            "parts": [part_dict(part, comparison, verdict) for part, comparison, verdict in self.parts],
            "paths": self.results.paths,
            "scale": self.scale.name,
            "seconds": self.seconds,
            "notes": self.notes,
        }

    def configs(self) -> dict[str, dict[str, Any]]:
        """Each side of each part: its metric's mean, std and 95% CI, and its failed runs.

        Keyed by the side's name, or "name (metric)" when that name was summarized on another metric.
        """
        out: dict[str, dict[str, Any]] = {}
        for part, _, _ in self.parts:
            metrics = (part.metric, part.metric_b or part.metric)
            for label, name, metric in zip((part.a, part.b), part.labels, metrics, strict=True):
                key = name if out.get(name, {}).get("metric", metric) == metric else f"{name} ({metric})"
                values = self.results.values(label, metric, self.claim.failed_value)
                summary = {**summarize(values).to_dict(), "metric": metric}
                out.setdefault(key, {**summary, "failed": len(self.results.failed(label))})
        return out


def part_dict(part: Part, comparison: Paired, verdict: str) -> dict[str, Any]:
    """The part's statistics; "comparison" is the statistical verdict, "verdict" the claim's."""
    return {
        **comparison.to_dict(),
        "expected": part.describe(),
        "expect": part.expect,
        "margin": part.margin,
        "comparison": comparison.verdict,
        "verdict": verdict,
    }


def gain(comparison: Paired) -> tuple[float, tuple[float, float]] | None:
    """The mean difference and CI turned so that positive means A improves on B."""
    if comparison.ci is None:
        return None
    sign = 1.0 if comparison.higher_is_better else -1.0
    low, high = sorted((sign * comparison.ci[0], sign * comparison.ci[1]))
    return sign * comparison.mean_difference, (low, high)


def judge(part: Part, comparison: Paired) -> str:
    """A part's verdict from its paired comparison (see the module docstring)."""
    measured = gain(comparison)
    if measured is None:
        return INCONCLUSIVE
    mean, (low, high) = measured
    if part.expect == "better":
        return HOLDS if comparison.a_better else FAILS if comparison.b_better else INCONCLUSIVE
    if part.expect == "at_least":
        return HOLDS if low > -part.margin else FAILS if comparison.b_better else INCONCLUSIVE
    if part.expect == "similar":
        if -part.margin < low and high < part.margin:
            return HOLDS
        significant = comparison.a_better or comparison.b_better
        return FAILS if significant and abs(mean) > part.margin else INCONCLUSIVE
    if part.expect == "no_gain":
        return HOLDS if high < part.margin else FAILS if comparison.a_better else INCONCLUSIVE
    raise unknown_name("expectation", part.expect, EXPECTATIONS)


def combine(verdicts: Sequence[str], how: str) -> str:
    """A claim's verdict from its parts': "all" must hold, or "any" one of them."""
    if how == "any" and HOLDS in verdicts:
        return HOLDS
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def compare_part(
    part: Part, results: Results, failed_value: float | None, p_adjusted: float | None = None
) -> Paired:
    metric_b = part.metric_b or part.metric
    return paired(
        results.values(part.a, part.metric, failed_value),
        results.values(part.b, metric_b, failed_value),
        names=part.labels,
        metric=part.metric,
        higher_is_better=higher_is_better(part.metric),
        p_adjusted=p_adjusted,
    )


def judge_claim(claim: Claim, results: Results) -> tuple[str, list[tuple[Part, Paired, str]]]:
    comparisons = [compare_part(part, results, claim.failed_value) for part in claim.parts]
    if claim.combine == "any" and len(comparisons) > 1:
        adjusted = holm([c.p_t for c in comparisons])
        comparisons = [
            compare_part(part, results, claim.failed_value, p)
            for part, p in zip(claim.parts, adjusted, strict=True)
        ]
    judged = [(part, c, judge(part, c)) for part, c in zip(claim.parts, comparisons, strict=True)]
    return combine([v for _, _, v in judged], claim.combine), judged


# ---- the experiments' building blocks -----------------------------------------------------------


def data_section(scale: Scale) -> dict[str, Any]:
    """Every claim's data: MNIST-1D, standardized (one dataset per scale, loaded once per process)."""
    return {"name": "mnist1d", "num_samples": scale.samples}


def mlp(
    scale: Scale,
    *,
    depth: int,
    epochs: int,
    optimizer: str = "momentum",
    lr: float = 0.01,
    width: int = 100,
    optimizer_options: dict[str, Any] | None = None,
    **model: Any,
) -> Config:
    """An MLP on MNIST-1D at `scale`, batch 32, no schedule: the claims' common ground."""
    return configs.from_dict(
        {
            "data": data_section(scale),
            "model": {"kind": "mlp", "depth": scale.depth(depth), "width": scale.width(width), **model},
            "optimizer": {"name": optimizer, "lr": lr, **(optimizer_options or {})},
            "schedule": {"name": "none"},
            "train": {"epochs": scale.epochs(epochs), "batch_size": 32, "device": "cpu"},
            "output": {"progress": False},
        }
    )


def mc_dropout_metrics(model: nn.Module, dataset: Dataset, samples: int) -> dict[str, float]:
    """Test accuracy and negative log-likelihood of MC dropout's averaged probabilities."""
    x, y = dataset.test.x, dataset.test.y
    mean, _ = mc_dropout_predict(model, x, samples, seed=0)
    nll = F.nll_loss(torch.log(mean.clamp_min(1e-12)), y)
    return {"mc_accuracy": float((mean.argmax(1) == y).float().mean()), "mc_nll": float(nll)}


def mc_evaluate(scale: Scale) -> Evaluate:
    return functools.partial(mc_dropout_metrics, samples=scale.mc_samples)


@torch.no_grad()
def normalization_error(model: nn.Module, dataset: Dataset) -> dict[str, float]:
    """How far the hidden layers' outputs on the test inputs are from mean 0 and std 1, averaged
    over the layers (|mean| + |std - 1|): 0 for a network that keeps them normalized."""
    blocks = {name for name, _ in models.hidden_blocks(model)}
    model.eval()
    h, errors = dataset.test.x, []
    for name, layer in model.named_children():
        h = layer(h)
        if name in blocks:
            errors.append(float(h.mean().abs() + (h.std() - 1).abs()))
    return {"normalization_error": sum(errors) / len(errors)}


def normalization_evaluate(scale: Scale) -> Evaluate:
    return normalization_error


def transfer_trial(seed: int, *, scale: Scale) -> dict[str, Any]:
    """One seed of the chapter's case study: A on 8 classes, B (2 classes, few labels) from
    scratch and B on A (reused, frozen, then fine-tuned), as ``transfer_study.study_run``."""
    from gradwell.experiment.transfer_study import TransferOptions, study_run

    config = with_seed(mlp(scale, depth=3, epochs=20, optimizer="nadam", lr=0.002, activation="elu"), seed)
    options = TransferOptions(
        limit_train=scale.few_labels,
        frozen_epochs=scale.epochs(4),
        epochs=scale.epochs(16),
        lr=0.001,
        optimizer="nadam",
        batch_size=32,
    )
    result = study_run(config, options, dataset_of(config), None, torch.device("cpu"))
    return {"extra": {key: result[key] for key in ("a", "b_scratch", "b_on_a")}}


def pretraining_trial(seed: int, *, scale: Scale) -> dict[str, Any]:
    """One seed: the same MLP trained on a few labels from scratch, or from an autoencoder's encoder
    pretrained on every training input (``gradwell.pretrain.autoencoder``), then ``reuse``d with a
    new head and ``fine_tune``d (head alone, then everything) for as many epochs at the same rate."""
    from gradwell.pretrain import autoencoder
    from gradwell.train import fit
    from gradwell.train.loop import evaluate
    from gradwell.transfer import fine_tune, reuse

    dataset = dataset_of(configs.from_dict({"data": data_section(scale)}))
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed))
    labeled = order[: scale.few_labels]
    few = dataclasses.replace(dataset, train=Split(dataset.train.x[labeled], dataset.train.y[labeled]))
    hidden = [scale.width(100)] * scale.depth(3)
    epochs, frozen = scale.epochs(30), scale.epochs(5)

    def fresh() -> nn.Sequential:
        return models.mlp(40, 10, hidden, activation="elu", generator=torch.Generator().manual_seed(seed))

    scratch = fresh()
    optimizer = optim.create("nadam", scratch.parameters(), lr=0.001)
    fit(scratch, few, optimizer=optimizer, epochs=epochs, seed=seed, progress=False)
    encoder = fresh()
    autoencoder(encoder[:-1], dataset, epochs=scale.epochs(10), seed=seed)
    pretrained = reuse(encoder, drop_top=1, head=10, generator=torch.Generator().manual_seed(seed + 1))
    rest = max(1, epochs - frozen)
    fine_tune(
        pretrained,
        few,
        frozen_epochs=frozen,
        epochs=rest,
        lr=0.001,
        lr_after_unfreeze=0.001,
        optimizer="nadam",
        seed=seed,
    )
    test = dataset.test
    return {
        "extra": {
            "pretrained": evaluate(pretrained, test.x, test.y)["accuracy"],
            "scratch": evaluate(scratch, test.x, test.y)["accuracy"],
        }
    }


ACCURACY = "test_accuracy"


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "he-init",
        "He initialization trains deep ReLU nets where Glorot stalls",
        "MNIST-1D, 30x100 ReLU MLP, SGD momentum 0.9 lr 0.01, 10 epochs; He normal vs Glorot uniform",
        lambda s: {
            "he": mlp(s, depth=30, epochs=10, init="he_normal"),
            "glorot": mlp(s, depth=30, epochs=10, init="glorot_uniform"),
        },
        (Part("he", "glorot", "better", ACCURACY),),
    ),
    Claim(
        "leaky-relu",
        "leaky ReLU (alpha 0.2) beats alpha 0.01, which beats ReLU",
        "MNIST-1D, 10x100 MLP with He init (leaky gain), SGD momentum 0.9 lr 0.01, 10 epochs",
        lambda s: {
            "leaky_0.2": mlp(
                s, depth=10, epochs=10, activation="leaky_relu", activation_options={"alpha": 0.2}
            ),
            "leaky_0.01": mlp(
                s, depth=10, epochs=10, activation="leaky_relu", activation_options={"alpha": 0.01}
            ),
            "relu": mlp(s, depth=10, epochs=10, activation="relu"),
        },
        (Part("leaky_0.2", "leaky_0.01", "better", ACCURACY), Part("leaky_0.01", "relu", "better", ACCURACY)),
    ),
    Claim(
        "elu-faster",
        "ELU converges faster than ReLU",
        "MNIST-1D, 10x100 MLP, He init, SGD momentum 0.9 lr 0.01; training loss after 3 epochs",
        lambda s: {
            "elu": mlp(s, depth=10, epochs=3, activation="elu"),
            "relu": mlp(s, depth=10, epochs=3, activation="relu"),
        },
        (Part("elu", "relu", "better", "loss"),),
    ),
    Claim(
        "selu",
        "a deep SELU MLP self-normalizes and beats the same ReLU MLP",
        "MNIST-1D, the chapter's 100x100 MLP, SGD momentum 0.9 lr 0.001, 5 epochs; SELU + LeCun normal "
        "vs ReLU + He normal, standardized inputs; self-normalization: the hidden layers' outputs on the "
        "test inputs after training, mean |mean| + |std - 1| over the layers",
        lambda s: {
            "selu": mlp(s, depth=100, epochs=5, lr=0.001, activation="selu"),
            "relu": mlp(s, depth=100, epochs=5, lr=0.001, activation="relu"),
        },
        (Part("selu", "relu", "better", "normalization_error"), Part("selu", "relu", "better", ACCURACY)),
        evaluate=normalization_evaluate,
    ),
    Claim(
        "batchnorm",
        "batch normalization lets a deep sigmoid network train; before vs after the activation makes "
        "little difference",
        "MNIST-1D, 20x100 sigmoid MLP, Glorot init, SGD momentum 0.9 lr 0.01, 10 epochs; no BN, BN before "
        "and BN after the activation; 'little difference': within 2 accuracy points",
        lambda s: {
            "bn_before": mlp(s, depth=20, epochs=10, activation="sigmoid", batchnorm="before"),
            "bn_after": mlp(s, depth=20, epochs=10, activation="sigmoid", batchnorm="after"),
            "no_bn": mlp(s, depth=20, epochs=10, activation="sigmoid"),
        },
        (
            Part("bn_before", "no_bn", "better", ACCURACY),
            Part("bn_after", "no_bn", "better", ACCURACY),
            Part("bn_before", "bn_after", "similar", ACCURACY, margin=0.02),
        ),
    ),
    Claim(
        "clipping",
        "gradient clipping rescues training at a learning rate where it diverges without",
        "MNIST-1D, 10x100 ReLU MLP, He init, SGD momentum 0.9 at lr 0.5 (where a premise check saw the "
        "unclipped loss turn non-finite in epoch 1 for 3 seeds of 3), 10 epochs; global_clipnorm 1.0 vs "
        "none; a diverged run scores chance accuracy (0.1)",
        lambda s: {
            "clipped": mlp(s, depth=10, epochs=10, lr=0.5, optimizer_options={"global_clipnorm": 1.0}),
            "unclipped": mlp(s, depth=10, epochs=10, lr=0.5),
        },
        (Part("clipped", "unclipped", "better", ACCURACY),),
        failed_value=0.1,
    ),
    Claim(
        "momentum",
        "momentum beats plain gradient descent, and Nesterov is at least as fast",
        "MNIST-1D, 10x100 ReLU MLP, He init, lr 0.01, 5 epochs; SGD vs momentum 0.9 vs Nesterov 0.9; "
        "training loss; 'at least as fast': within 0.02 nats",
        lambda s: {
            "nesterov": mlp(s, depth=10, epochs=5, optimizer="nesterov"),
            "momentum": mlp(s, depth=10, epochs=5, optimizer="momentum"),
            "sgd": mlp(s, depth=10, epochs=5, optimizer="sgd"),
        },
        (
            Part("momentum", "sgd", "better", "loss"),
            Part("nesterov", "momentum", "at_least", "loss", margin=0.02),
        ),
    ),
    Claim(
        "adagrad",
        "AdaGrad stops too early on a deep network where RMSProp keeps going",
        "MNIST-1D, 20x100 ReLU MLP, He init, 20 epochs at Keras's lr 0.001 for both; training loss",
        lambda s: {
            "rmsprop": mlp(s, depth=20, epochs=20, optimizer="rmsprop", lr=0.001),
            "adagrad": mlp(s, depth=20, epochs=20, optimizer="adagrad", lr=0.001),
        },
        (Part("rmsprop", "adagrad", "better", "loss"),),
    ),
    Claim(
        "transfer",
        "transfer learning with small dense networks gives no reliable gain (the case study)",
        "MNIST-1D, model A: 3x100 ELU MLP, Nadam lr 0.002, 20 epochs on classes 0-7; task B: classes 8 vs 9 "
        "with 200 labels; B on A: A's hidden layers reused, frozen 4 epochs, fine-tuned 16 at lr 0.0001 "
        "(Nadam, lr 0.001 before); B from scratch: A's architecture, 20 epochs; test accuracy on B; "
        "'reliable gain': more than 2 points",
        lambda s: {"case_study": functools.partial(transfer_trial, scale=s)},
        (
            Part(
                "case_study",
                "case_study",
                "no_gain",
                "b_on_a",
                margin=0.02,
                metric_b="b_scratch",
                names=("b_on_a", "b_scratch"),
            ),
        ),
    ),
    Claim(
        "pretraining",
        "unsupervised pretraining helps when labels are scarce",
        "MNIST-1D, 3x100 ELU MLP, 200 labeled training samples (drawn per seed) out of 3600; scratch: Nadam "
        "lr 0.001, 30 epochs; pretrained: an autoencoder (Adam, 10 epochs) on all 3600 training inputs, "
        "then a new head trained 5 epochs on the frozen encoder and everything 25 more, same optimizer and "
        "rate; test accuracy on all 10 classes",
        lambda s: {"pretraining": functools.partial(pretraining_trial, scale=s)},
        (
            Part(
                "pretraining",
                "pretraining",
                "better",
                "pretrained",
                metric_b="scratch",
                names=("pretrained", "scratch"),
            ),
        ),
    ),
    Claim(
        "smooth-activations",
        "Swish, GELU and Mish match or beat ReLU on a harder task",
        "MNIST-1D (harder than digits), 10x100 MLP, He init, SGD momentum 0.9 lr 0.01, 15 epochs; "
        "'match': within 1 accuracy point",
        lambda s: {
            name: mlp(s, depth=10, epochs=15, activation=name) for name in ("swish", "gelu", "mish", "relu")
        },
        tuple(Part(name, "relu", "at_least", ACCURACY, margin=0.01) for name in ("swish", "gelu", "mish")),
    ),
    Claim(
        "mc-dropout",
        "MC dropout improves accuracy or calibration a little",
        "MNIST-1D, 3x256 ReLU MLP with dropout 0.2, SGD momentum 0.9 lr 0.01, 15 epochs; the same trained "
        "model predicting with dropout off vs the mean of 100 MC dropout samples; calibration: test NLL",
        lambda s: {"dropout": mlp(s, depth=3, width=256, epochs=15, dropout=0.2)},
        (
            Part(
                "dropout", "dropout", "better", "mc_accuracy", metric_b="test_accuracy", names=("mc", "plain")
            ),
            Part("dropout", "dropout", "better", "mc_nll", metric_b="test_loss", names=("mc", "plain")),
        ),
        combine="any",
        evaluate=mc_evaluate,
    ),
)


def find(names: Sequence[str] | None) -> list[tuple[int, Claim]]:
    """The claims named (by name or number), in the chapter's order; all when `names` is None."""
    numbered = list(enumerate(CLAIMS, 1))
    if not names:
        return numbered
    chosen = []
    for name in names:
        match = [(i, c) for i, c in numbered if name in (c.name, str(i))]
        if not match:
            raise unknown_name("claim", name, [c.name for c in CLAIMS])
        chosen += match
    return sorted(set(chosen), key=lambda item: item[0])


def run_claim(number: int, claim: Claim, scale: Scale, workers: int, executor=None) -> ClaimResult:
    started = time.perf_counter()
    evaluate = claim.evaluate(scale) if claim.evaluate is not None else None
    results = run(claim.arms(scale), range(scale.seeds), workers, evaluate=evaluate, executor=executor)
    verdict, parts = judge_claim(claim, results)
    notes = [f"{r.label} seed {r.seed} failed: {r.error}" for r in results.records if not r.ok]
    return ClaimResult(number, claim, scale, verdict, parts, results, time.perf_counter() - started, notes)


def run_claims(
    names: Sequence[str] | None = None,
    scale: str | Scale = "full",
    workers: int | None = None,
    on_result: Callable[[ClaimResult], None] | None = None,
) -> list[ClaimResult]:
    """Run the claims (all, or those named) at `scale`; `on_result` sees each as it finishes.

    One pool of worker processes serves every claim; ``workers=0`` runs in this process.
    """
    if isinstance(scale, str):
        if scale not in SCALES:
            raise unknown_name("scale", scale, SCALES)
        scale = SCALES[scale]
    chosen = find(names)
    workers = default_claim_workers() if workers is None else workers
    executor = pool(workers) if workers > 1 else None
    outcomes = []
    try:
        for number, claim in chosen:
            outcome = run_claim(number, claim, scale, workers, executor)
            outcomes.append(outcome)
            if on_result is not None:
                on_result(outcome)
    finally:
        if executor is not None:
            executor.shutdown()
    return outcomes


def default_claim_workers() -> int:
    """One worker per core, up to 4: claims have 2 to 4 arms."""
    return max(1, min(os.cpu_count() or 1, 4))


__all__ = ["CLAIMS", "SCALES", "Claim", "ClaimResult", "Part", "Scale", "run_claims"]
