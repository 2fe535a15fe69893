"""The chapter's claims, each an experiment on built-in data with a verdict from the data.

Each claim trains a few configs (its "arms", built by ``trials``) on the same seeds, then judges
one or more paired comparisons ("parts", judged by ``verdicts``). Setups follow the chapter and
were fixed before the results were seen; none is tuned until it "holds". They are described at
the full scale (see ``trials.SCALES``) and run on MNIST-1D unless told another data set
(``run_claims(data=...)``, ``gradwell claims --data``); every result names the data it came from.
MNIST-1D is generated from mnist1d's data seed 42 unless a claim names its own (``Claim.data_seed``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwell.data import Dataset
from gradwell.errors import DataError, unknown_name
from gradwell.experiment.claims.trials import (
    SCALES,
    Scale,
    data_record,
    mc_evaluate,
    mlp,
    normalization_evaluate,
    pretraining_needs,
    pretraining_trial,
    scale_dataset,
    transfer_needs,
    transfer_trial,
)
from gradwell.experiment.claims.verdicts import Part, judge_parts, part_dict
from gradwell.experiment.execution import Evaluate
from gradwell.experiment.records import Results
from gradwell.experiment.runner import Arm, run
from gradwell.experiment.stats import Paired, summarize
from gradwell.experiment.workers import pool

log = logging.getLogger(__name__)

CHANCE = "chance"  # a failed run's score: chance accuracy, 1 / K on the data's K classes


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
    failed_value: float | str | None = None  # a failed (diverged) run's score, or CHANCE; None: left out
    evaluate: Callable[[Scale], Evaluate] | None = None
    needs: Callable[[Dataset, Scale], str | None] | None = None  # why it cannot run on this data, or None
    data_seed: int | None = None  # MNIST-1D generated from this seed (None: 42); other data as it is

    def at(self, scale: Scale) -> Scale:
        """The scale this claim runs at: `scale`, with MNIST-1D generated from the claim's data seed.

        >>> find(["clipping-rescue"])[0][1].at(SCALES["smoke"]).data_seed
        1201
        """
        return scale.seeded(self.data_seed)


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
    data: dict[str, Any] = field(default_factory=dict)  # trials.data_record: what it ran on

    def to_dict(self) -> dict[str, Any]:
        head, comparison, _ = self.parts[0]
        return {
            "number": self.number,
            "name": self.claim.name,
            "statement": self.claim.statement,
            "setup": self.claim.setup,
            "verdict": self.verdict,
            "expected": "; ".join(part.describe() for part, _, _ in self.parts if part.judged),
            "metric": head.metric,
            "higher_is_better": comparison.higher_is_better,
            "n_seeds": len(self.results.seeds),
            "configs": self.configs(),
            "difference": {"mean": comparison.mean_difference, "ci": comparison.ci, "n": comparison.n},
            "p_value": comparison.p_t,
            "parts": [part_dict(part, comparison, verdict) for part, comparison, verdict in self.parts],
            "paths": self.results.paths,
            "scale": self.scale.name,
            "data": self.data or {"name": self.scale.data},
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
                values = self.results.values(label, metric, failed_score(self.claim, self.scale))
                summary = {**summarize(values).to_dict(), "metric": metric}
                out.setdefault(key, {**summary, "failed": len(self.results.failed(label))})
        return out


ACCURACY = "test_accuracy"


def clipping_arms(lr: float) -> Callable[[Scale], dict[str, Any]]:
    """Claims 6 and 13: the 10x100 ReLU MLP for 10 epochs of SGD with momentum at `lr`, with global
    clipping at 1.0 and without."""
    return lambda s: {
        "clipped": mlp(s, depth=10, epochs=10, lr=lr, optimizer_options={"global_clipnorm": 1.0}),
        "unclipped": mlp(s, depth=10, epochs=10, lr=lr),
    }


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "he-init",
        "He initialization trains deep ReLU nets where Glorot stalls",
        "30x100 ReLU MLP, SGD momentum 0.9 lr 0.01, 10 epochs; He normal vs Glorot uniform",
        lambda s: {
            "he": mlp(s, depth=30, epochs=10, init="he_normal"),
            "glorot": mlp(s, depth=30, epochs=10, init="glorot_uniform"),
        },
        (Part("he", "glorot", "better", ACCURACY),),
    ),
    Claim(
        "leaky-relu",
        "leaky ReLU (alpha 0.2) beats alpha 0.01, which beats ReLU",
        "10x100 MLP with He init (leaky gain), SGD momentum 0.9 lr 0.01, 10 epochs",
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
        "10x100 MLP, He init, SGD momentum 0.9 lr 0.01; training loss after 3 epochs",
        lambda s: {
            "elu": mlp(s, depth=10, epochs=3, activation="elu"),
            "relu": mlp(s, depth=10, epochs=3, activation="relu"),
        },
        (Part("elu", "relu", "better", "loss"),),
    ),
    Claim(
        "selu",
        "a deep SELU MLP self-normalizes and beats the same ReLU MLP",
        "the chapter's 100x100 MLP, SGD momentum 0.9 lr 0.001, 5 epochs; SELU + LeCun normal "
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
        "20x100 sigmoid MLP, Glorot init, SGD momentum 0.9 lr 0.01, 10 epochs; no BN, BN before "
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
        "10x100 ReLU MLP, He init, SGD momentum 0.9 at lr 0.5 (where a premise check on MNIST-1D saw "
        "the unclipped loss turn non-finite in epoch 1 for 3 seeds of 3), 10 epochs; global_clipnorm 1.0 "
        "vs none; a diverged run scores chance accuracy (1/K for K classes: 0.1 on MNIST-1D)",
        clipping_arms(0.5),
        (Part("clipped", "unclipped", "better", ACCURACY),),
        failed_value=CHANCE,
    ),
    Claim(
        "momentum",
        "momentum beats plain gradient descent, and Nesterov is at least as fast",
        "10x100 ReLU MLP, He init, lr 0.01, 5 epochs; SGD vs momentum 0.9 vs Nesterov 0.9; "
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
        "20x100 ReLU MLP, He init, 20 epochs at Keras's lr 0.001 for both; training loss",
        lambda s: {
            "rmsprop": mlp(s, depth=20, epochs=20, optimizer="rmsprop", lr=0.001),
            "adagrad": mlp(s, depth=20, epochs=20, optimizer="adagrad", lr=0.001),
        },
        (Part("rmsprop", "adagrad", "better", "loss"),),
    ),
    Claim(
        "transfer",
        "transfer learning with small dense networks gives no reliable gain (the case study)",
        "model A: 3x100 ELU MLP, Nadam lr 0.002, 20 epochs on classes 0-7; task B: the other classes "
        "(8 vs 9 on 10) with 200 labels; B on A: A's hidden layers reused, frozen 4 epochs, fine-tuned 16 "
        "at lr 0.0001 (Nadam, lr 0.001 before); B from scratch: A's architecture, 20 epochs; test accuracy "
        "on B; 'reliable gain': more than 2 points",
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
        needs=transfer_needs,
    ),
    Claim(
        "pretraining",
        "unsupervised pretraining helps when labels are scarce",
        "3x100 ELU MLP, 200 labeled training samples (drawn per seed) out of the training split (3600 "
        "on MNIST-1D); scratch: Nadam lr 0.001, 30 epochs; autoencoder: its hidden layers pretrained as an "
        "autoencoder's encoder (Adam, 10 epochs) on every training input, then a new head trained 5 epochs "
        "on the frozen encoder and everything 25 more, same optimizer and rate; gan (reported, not in the "
        "verdict): the same hidden layers pretrained as a GAN discriminator's lower layers (Adam lr 2e-4, "
        "beta1 0.5, 10 epochs), then the same fine-tuning; the same initial weights in every arm; test "
        "accuracy on every class",
        lambda s: {"pretraining": functools.partial(pretraining_trial, scale=s)},
        (
            Part(
                "pretraining",
                "pretraining",
                "better",
                "autoencoder",
                metric_b="scratch",
                names=("autoencoder", "scratch"),
            ),
            # The chapter's other unsupervised pretraining, reported with its interval but left out of
            # the verdict: the claim was fixed, with its autoencoder, before any result was seen, and
            # the GAN arm joined after benchmarks/bench_gan_pretraining.py had measured it on these
            # seeds. Letting it in ("any" of the two) would move the claim's rule after seeing the data
            # and add a second chance to hold; requiring it too ("all") would judge the autoencoder
            # claim by an arm it does not state.
            Part(
                "pretraining",
                "pretraining",
                "better",
                "gan",
                metric_b="scratch",
                names=("gan", "scratch"),
                judged=False,
            ),
        ),
        needs=pretraining_needs,
    ),
    Claim(
        "smooth-activations",
        "Swish, GELU and Mish match or beat ReLU on a harder task",
        "10x100 MLP, He init, SGD momentum 0.9 lr 0.01, 15 epochs; 'match': within 1 accuracy point; "
        "MNIST-1D is the harder task (than digits)",
        lambda s: {
            name: mlp(s, depth=10, epochs=15, activation=name) for name in ("swish", "gelu", "mish", "relu")
        },
        tuple(Part(name, "relu", "at_least", ACCURACY, margin=0.01) for name in ("swish", "gelu", "mish")),
    ),
    Claim(
        "mc-dropout",
        "MC dropout improves accuracy or calibration a little",
        "3x256 ReLU MLP with dropout 0.2, SGD momentum 0.9 lr 0.01, 15 epochs; the same trained "
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
    # Claim 6 declared anew (issue 17), its setup fixed on 2026-12-01 before any run of it. Claim 6
    # (kept as it was) is inconclusive: at lr 0.5 the unclipped runs diverge and the clipped ones stay
    # at chance too, so there was nothing to rescue and the rescue went untested. Issue 17 fixes lr 0.2,
    # lower, where clipping may plausibly keep training alive; the rate was chosen after claim 6's
    # result was seen, so the claim runs on MNIST-1D from a data seed no earlier run used: no claim set
    # one before (all ran on mnist1d's default 42, claim 6's premise check with them, as far as the
    # code and its history show; no record of another scan's seeds was found), and the tests' own
    # MNIST-1D uses seeds 0 to 3. 1201 is the declaration's date: a seed fixed by that rule, not picked
    # from several. Everything else is claim 6's.
    Claim(
        "clipping-rescue",
        "gradient clipping rescues training at a learning rate where it diverges without",
        "claim 6 declared anew: 10x100 ReLU MLP, He init, SGD momentum 0.9 at lr 0.2, 10 epochs; "
        "global_clipnorm 1.0 vs none; MNIST-1D generated from data seed 1201 (the other claims: 42); "
        "a diverged run scores chance accuracy (1/K for K classes: 0.1 on MNIST-1D)",
        clipping_arms(0.2),
        (Part("clipped", "unclipped", "better", ACCURACY),),
        failed_value=CHANCE,
        data_seed=1201,
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


def judge_claim(
    claim: Claim, results: Results, failed_value: float | None = None
) -> tuple[str, list[tuple[Part, Paired, str]]]:
    """The claim's verdict from its runs, and each part's comparison and verdict."""
    return judge_parts(claim.parts, claim.combine, results, failed_value)


def failed_score(claim: Claim, scale: Scale) -> float | None:
    """The score of the claim's failed runs at `scale`: its failed_value, CHANCE read off the data."""
    if claim.failed_value == CHANCE:
        return 1 / scale_dataset(scale).num_classes
    return claim.failed_value


def check_data(chosen: Sequence[tuple[int, Claim]], scale: Scale) -> dict[str, Any]:
    """Load the claims' data at `scale` (here, before anything trains: a bad name or file is a
    DataError now, and a download happens once, not in every worker) and check that each chosen claim
    can run on it (a claim with its own data seed on the data it generates); return
    ``trials.data_record`` of `scale`."""
    own = {number: claim.at(scale) for number, claim in chosen}
    problems = {}
    for number, claim in chosen:
        problem = None if claim.needs is None else claim.needs(scale_dataset(own[number]), own[number])
        if problem is not None:
            problems[number] = f"claim {number} ({claim.name}) {problem}"
    if problems:
        others = [f"--only {number}" for number, _ in chosen if number not in problems]
        hint = (
            f"; leave it out (run the others: {' '.join(others)}) or choose another data set"
            if others
            else ""
        )
        raise DataError(f"cannot run on data set {scale.data!r}: {'; '.join(problems.values())}{hint}")
    return data_record(scale)


def announced(chosen: Sequence[tuple[int, Claim]], scale: Scale, record: dict[str, Any]) -> dict[str, Any]:
    """The data the chosen claims run on: their own record where they share one, else `record` (the
    suite's) with the claims that generate their own data from another data seed named."""
    own = {number: claim.at(scale) for number, claim in chosen}
    if len(set(own.values())) == 1 and own[chosen[0][0]] != scale:
        return data_record(own[chosen[0][0]])
    seeded = [f"claim {n} ({c.name}) from data seed {c.data_seed}" for n, c in chosen if own[n] != scale]
    return {**record, "sampling": f"{record['sampling']}; {', '.join(seeded)}"} if seeded else record


def fallbacks(results: Results) -> list[str]:
    """The arms that trained one seed at a time (where seed batching did not apply), with the reason."""
    return [
        f"{label}: one seed at a time ({path.removeprefix('single (').removesuffix(')')})"
        for label, path in results.paths.items()
        if path.startswith("single (") or " / " in path
    ]


def run_claim(
    number: int, claim: Claim, scale: Scale, workers: int, executor=None, data: dict[str, Any] | None = None
) -> ClaimResult:
    """Run one claim at `scale` (on ``scale.data``, generated from the claim's own data seed if it has
    one); `data` is the ``check_data`` record, replaced by the claim's own where its data differ."""
    started = time.perf_counter()
    if claim.at(scale) != scale:
        scale = claim.at(scale)
        data = data_record(scale)
    evaluate = claim.evaluate(scale) if claim.evaluate is not None else None
    results = run(claim.arms(scale), range(scale.seeds), workers, evaluate=evaluate, executor=executor)
    verdict, parts = judge_claim(claim, results, failed_score(claim, scale))
    notes = [f"{r.label} seed {r.seed} failed: {r.error}" for r in results.records if not r.ok]
    for note in fallbacks(results):
        log.info("claim %d (%s) on %s: %s", number, claim.name, scale.data, note)
        notes.append(note)
    seconds = time.perf_counter() - started
    return ClaimResult(number, claim, scale, verdict, parts, results, seconds, notes, data or {})


def run_claims(
    names: Sequence[str] | None = None,
    scale: str | Scale = "full",
    workers: int | None = None,
    on_result: Callable[[ClaimResult], None] | None = None,
    data: str | None = None,
    on_data: Callable[[dict[str, Any]], None] | None = None,
) -> list[ClaimResult]:
    """Run the claims (all, or those named) at `scale`; `on_result` sees each as it finishes.

    One pool of worker processes serves every claim; ``workers=0`` runs in this process.
    `names` are claims' names or numbers (``find``); `scale` a name of ``SCALES`` or a Scale;
    `data` a data set's name as ``gradwell.data.load`` takes it (None: the scale's, MNIST-1D), the
    data loaded and checked against every chosen claim before anything trains (``check_data``;
    `on_data` sees its record then, as ``announced``).
    The whole suite takes minutes, so the example only chooses what would run:

    >>> [f"{number}. {claim.name}" for number, claim in find(["momentum", "1"])]
    ['1. he-init', '7. momentum']
    >>> quick = SCALES["quick"]
    >>> quick.seeds, quick.samples
    (5, 3000)
    >>> results = run_claims(["momentum"], scale="quick", data="digits")  # doctest: +SKIP
    >>> results[0].data["name"], results[0].data["train"]  # digits has fewer than 2160  # doctest: +SKIP
    ('digits', 1294)
    """
    if isinstance(scale, str):
        if scale not in SCALES:
            raise unknown_name("scale", scale, SCALES)
        scale = SCALES[scale]
    if data is not None:
        if not isinstance(data, str):
            raise DataError(f"data must be a data set's name (a string); got {data!r}")
        scale = scale.on(data)
    chosen = find(names)
    record = check_data(chosen, scale)
    if on_data is not None:
        on_data(announced(chosen, scale, record))
    workers = default_claim_workers() if workers is None else workers
    executor = pool(workers) if workers > 1 else None
    outcomes = []
    try:
        for number, claim in chosen:
            outcome = run_claim(number, claim, scale, workers, executor, record)
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
