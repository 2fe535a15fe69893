"""The chapter's claims, each an experiment on built-in data with a verdict from the data.

Each claim trains a few configs (its "arms", built by ``trials``) on the same seeds, then judges
one or more paired comparisons ("parts", judged by ``verdicts``). Setups follow the chapter and
were fixed before the results were seen; none is tuned until it "holds". They are described at
the full scale (see ``trials.SCALES``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwell.errors import unknown_name
from gradwell.experiment.claims.trials import (
    SCALES,
    Scale,
    mc_evaluate,
    mlp,
    normalization_evaluate,
    pretraining_trial,
    transfer_trial,
)
from gradwell.experiment.claims.verdicts import Part, judge_parts, part_dict
from gradwell.experiment.execution import Evaluate
from gradwell.experiment.records import Results
from gradwell.experiment.runner import Arm, run
from gradwell.experiment.stats import Paired, summarize
from gradwell.experiment.workers import pool


@dataclass(frozen=True)
class Claim:
    """A claim of the chapter as an experiment: the arms to train and the parts to judge.

    >>> claim = find(["he-init"])[0][1]
    >>> claim.statement
    'He initialization trains deep ReLU nets where Glorot stalls'
    >>> sorted(claim.arms(SCALES["smoke"])), [part.describe() for part in claim.parts]
    (['glorot', 'he'], ['he better than glorot on test_accuracy'])
    """

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
    """A claim's verdict at a scale, each part's comparison and verdict, and every run behind them.

    A claim of your own runs as the chapter's do; here its arms are functions of the seed that
    only report a score, so no network trains:

    >>> toy = Claim(
    ...     "toy",
    ...     "a scores higher than b",
    ...     "two arms reporting a score per seed",
    ...     lambda scale: {
    ...         "a": lambda seed: {"extra": {"score": 0.9 + 0.01 * seed}},
    ...         "b": lambda seed: {"extra": {"score": 0.5 + 0.02 * seed}},
    ...     },
    ...     (Part("a", "b", "better", "score"),),
    ... )
    >>> result = run_claim(1, toy, SCALES["smoke"], workers=0)
    >>> result.verdict, result.to_dict()["expected"], result.to_dict()["n_seeds"]
    ('holds', 'a better than b on score', 3)
    """

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
    """The claims named (by name or number), in the chapter's order; all when `names` is None.

    >>> [(number, claim.name) for number, claim in find(["selu", "2"])]
    [(2, 'leaky-relu'), (4, 'selu')]
    >>> len(find(None)) == len(CLAIMS)
    True
    """
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


def judge_claim(claim: Claim, results: Results) -> tuple[str, list[tuple[Part, Paired, str]]]:
    """The claim's verdict from its runs, and each part's comparison and verdict."""
    return judge_parts(claim.parts, claim.combine, results, claim.failed_value)


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
    `names` are claims' names or numbers (``find``); `scale` a name of ``SCALES`` or a Scale.
    The whole suite takes minutes, so the example only chooses what would run:

    >>> [f"{number}. {claim.name}" for number, claim in find(["momentum", "1"])]
    ['1. he-init', '7. momentum']
    >>> quick = SCALES["quick"]
    >>> quick.seeds, quick.samples
    (5, 3000)
    >>> results = run_claims(["momentum"], scale="quick")  # doctest: +SKIP
    >>> results[0].verdict  # doctest: +SKIP
    'holds'
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
