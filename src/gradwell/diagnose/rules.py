"""The doctor's rules: symptoms in a Report, verdicts with their evidence, the chapter's fixes.

Each rule reads a Report (one measured pass, and a Monitor's history when there is one) and
returns a Verdict or None; "healthy" is the verdict when no rule fires. The fixes name the
model's own activation, initialization and layers, and the clipping threshold computed from the
gradient norms seen; for a residual network the remedies of Fixup (Zhang et al., 2019), for a
post-LN Transformer those of Xiong et al. (2020). The thresholds are the fields of ``Thresholds``,
with their reasons.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwell.activations import DISPLAY_NAMES
from gradwell.guidelines import GUIDELINES, SELF_NORMALIZING, Scaled
from gradwell.init import RECOMMENDED

if TYPE_CHECKING:
    from gradwell.diagnose.layers import ModelFacts
    from gradwell.diagnose.report import LayerReport, Report

VERDICTS = (
    "healthy",
    "vanishing_gradients",
    "exploding_gradients",
    "exploding_activations",
    "saturation",
    "dead_units",
    "uneven_learning",
    "non_finite",
)


@dataclass(frozen=True)
class Thresholds:
    """Where a symptom becomes a verdict. Gradient ratios compare the scale of the gradient with
    respect to a layer's output (its RMS for a dense layer; stats.gradient_stats), first layer /
    last layer: under plain SGD, how much slower the lower layers learn.

    >>> strict = Thresholds(saturated=0.1)
    >>> strict.saturated < Thresholds().saturated
    True
    """

    # 1/100: two orders of magnitude lost between the output and the first layer. Healthy nets
    # stay well inside: a 30-layer He ReLU net measures ~0.5, a 100-layer LeCun SELU net 13 to 25
    # (SELU's backward gain is about 1.035 per layer), while a 30-layer ReLU net with Glorot init
    # measures ~2e-5 and a 20-layer sigmoid net with Glorot init ~1e-12.
    vanishing_ratio: float = 1e-2
    exploding_ratio: float = 1e2  # the mirror image of vanishing_ratio
    # the last hidden layer's activation std 100x the first's: the signal grows with depth. Healthy
    # nets stay near 1 (30 He ReLU layers 0.5 to 0.9, 100 LeCun SELU layers ~1.1, 30 He ELU layers
    # at most ~3, sigmoid with batch normalization ~1.1 after training), while 30 ReLU layers with
    # twice He's variance measure ~1.5e4 and 30 unnormalized He residual blocks ~7e6 (Var x
    # triples per block: x + W2 relu(W1 x) adds twice Var x to it)
    activation_growth: float = 1e2
    # a sampled global gradient norm 100x its median over training: the "cliff" of Pascanu et al.
    # (2013), which is what global-norm clipping is for
    spike_ratio: float = 1e2
    # a quarter of a sigmoid or tanh layer's outputs in the flat tails (stats.SATURATION): sigmoid
    # with N(0, 1) init measures ~0.5 in every layer, with Glorot init ~0
    saturated: float = 0.25
    # half of a ReLU layer's units zero on the whole batch. At initialization a 30-layer He ReLU
    # net already shows up to 0.48 in its deepest layers on a batch of 256 (the inputs of deep
    # ReLU layers grow correlated), which trains fine, so the bar sits above it
    dead: float = 0.5
    # the fastest-learning layer 100x faster than the slowest, by update ratio ||dW|| / ||W||
    # (a Monitor) or, in a single probe, by relative gradient ||grad W|| / ||W||
    uneven_ratio: float = 1e2
    # the clipping threshold proposed: the 90th percentile of the global gradient norms seen,
    # which leaves nine steps in ten untouched and cuts the spikes
    clip_percentile: float = 90.0


@dataclass(frozen=True)
class Fix:
    """A remedy: what to do, and the change of a gradwell config that does it (``section.key ->
    value``, from gradwell.guidelines; a ``Scaled`` value multiplies the config's own). Empty
    changes: not a config change (Fixup inside a custom network, cleaning the data).

    >>> fix = guided("use He initialization", "he_init")
    >>> str(fix), fix.changes
    ('use He initialization', {'model.init': 'he_normal'})
    """

    text: str
    changes: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


def guided(text: str, *guidelines: str) -> Fix:
    """A fix whose config change is that of `guidelines` (names of gradwell.guidelines.GUIDELINES)."""
    changes: dict[str, Any] = {}
    for name in guidelines:
        changes |= GUIDELINES[name].changes
    return Fix(text, changes)


@dataclass
class Verdict:
    """A diagnosis: its name (one of VERDICTS), a one-line summary, the numbers behind it, the
    fixes made concrete for this model, and the layers concerned.

    >>> verdict = Verdict("dead_units", "ReLU units never fire", {"dead": 0.6}, layers=["hidden1"])
    >>> verdict.to_dict()["layers"]
    ['hidden1']
    """

    name: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fixes: list[Fix] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    @property
    def fix_texts(self) -> list[str]:
        return [fix.text for fix in self.fixes]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the fixes as their texts, and their config changes alongside ("fix_changes",
        {} where a fix is not one; a Scaled value as {"scaled": factor})."""
        return {
            "name": self.name,
            "summary": self.summary,
            "evidence": self.evidence,
            "fixes": self.fix_texts,
            "fix_changes": [
                {key: {"scaled": v.factor} if isinstance(v, Scaled) else v for key, v in fix.changes.items()}
                for fix in self.fixes
            ],
            "layers": list(self.layers),
        }


# activation name -> the name a fix writes, declared by each activation's record (its `display`)
DISPLAY: dict[str, str] = DISPLAY_NAMES
INIT_DISPLAY = {"he_normal": "He", "lecun_normal": "LeCun", "glorot_uniform": "Glorot"}
INIT_GUIDELINE = {"he_normal": "he_init", "lecun_normal": "lecun_init", "glorot_uniform": "glorot_init"}
BOUNDED = ("sigmoid", "tanh")
ADAPTIVE_HINT = (
    "an adaptive optimizer (Adam or Nadam), which scales each parameter's step by its own gradients"
)
BATCHNORM_FIX = 'add batch normalization before each activation (batchnorm="before")'


def display(activation: str) -> str:
    return DISPLAY.get(activation, activation)


def finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def bounded_fix(facts: ModelFacts) -> Fix:
    """He initialization with Swish for a sigmoid or tanh net (the chapter's default for deep nets)."""
    return guided(
        f"{facts.activation} with {facts.init} initialization: use He initialization with Swish (or ReLU)",
        "he_init",
        "swish",
    )


def architecture_fixes(facts: ModelFacts) -> list[Fix]:
    """The chapter's remedies for an unstable signal, for this activation and initialization."""
    activation, init = facts.activation, facts.init
    fixes = []
    if activation in BOUNDED:
        fixes.append(bounded_fix(facts))
    elif activation in RECOMMENDED and INIT_DISPLAY.get(RECOMMENDED[activation]) != init:
        name = RECOMMENDED[activation]
        guideline = INIT_GUIDELINE[name]
        fixes.append(
            guided(
                f"{display(activation)} with {init} initialization: use {INIT_DISPLAY[name]} initialization "
                f'(init="{name}"): {GUIDELINES[guideline].reason}',
                guideline,
            )
        )
    if activation == "selu":
        fixes += selu_fixes(facts)
    elif not (facts.batchnorm or facts.post_ln or facts.residual):
        # a post-LN Transformer normalizes already; a residual net is told where (residual_fixes)
        fixes.append(guided(BATCHNORM_FIX, "batchnorm"))
    return fixes


def selu_fixes(facts: ModelFacts) -> list[Fix]:
    """AlphaDropout for a SELU net with dropout; for any other broken condition of self-normalization,
    the self-normalizing configuration's model choices, which remove every such problem."""
    fixes = [guided("SELU network with dropout: use AlphaDropout", "alpha_dropout")] if facts.dropout else []
    return fixes + [
        guided(f"SELU network: {problem}", *SELF_NORMALIZING)
        for problem in facts.self_normalizing_problems
        if "dropout" not in problem
    ]


def clip_fix(report: Report, thresholds: Thresholds) -> Fix | None:
    """ "clip with global_clipnorm=X", X the chosen percentile of the gradient norms seen."""
    norms = finite(report.history.grad_norm) if report.history is not None else []
    if norms:
        value = float(np.percentile(norms, thresholds.clip_percentile))
        seen = f"the {thresholds.clip_percentile:g}th percentile of the {len(norms)} gradient norms seen"
    elif math.isfinite(report.grad_norm) and report.grad_norm > 0:
        value = report.grad_norm
        seen = "the gradient norm of the probed batch; a Monitor during training gives a percentile"
    else:
        return None
    threshold = float(f"{value:.3g}")
    changes = {"optimizer.global_clipnorm": threshold}
    return Fix(f"clip with global_clipnorm={threshold:.3g} ({seen})", changes)


def lower_lr(report: Report, step: int | None = None, why: str = "") -> Fix:
    """ "lower the learning rate" tenfold, with its value at `step` (default: the last sampled step)."""
    history = report.history
    text = "lower the learning rate"
    if history is not None and history.lr:
        i = history.steps.index(step) if step in history.steps else -1
        text += f" (it was {history.lr[i]:.3g} at step {history.steps[i]})"
    return Fix(text + why, GUIDELINES["lower_lr"].changes)


WARMUP_FIX = (
    "warm the learning rate up over the first steps (Xiong et al., 2020): a post-LN Transformer's "
    "gradients near the output are large at initialization, and full-size steps on them make training "
    "unstable"
)
PRE_LN_FIX = (
    "use pre-LN (norm_first=True): normalizing each sublayer's input keeps the gradients of every layer "
    "at one scale, so it trains without warm-up (Xiong et al., 2020)"
)


def post_ln_fixes(facts: ModelFacts) -> list[Fix]:
    """Xiong et al. (2020)'s remedies, for a model with post-LN Transformer layers (changes of the
    network's code: no gradwell config builds a Transformer)."""
    return [Fix(WARMUP_FIX), Fix(PRE_LN_FIX)] if facts.post_ln else []


def fixup_fix(report: Report) -> Fix:
    """Fixup's remedy for an unnormalized residual network, with its number of additions."""
    blocks = sum(layer.kind == "residual" for layer in report.layers)
    return Fix(
        "initialize each residual branch's last layer at zero (Fixup, Zhang et al. 2019; "
        f"zero_init_residual in torchvision) or scale the branch by 1/sqrt(depth) (depth: the {blocks} "
        "residual additions measured): each block then starts as (or near) the identity, and the signal "
        "keeps its scale"
    )


NORMALIZING = ("batchnorm", "layernorm", "groupnorm")


def residual_fixes(report: Report) -> list[Fix]:
    """For a residual network: Fixup, and normalization in each block unless it has some (a post-LN
    Transformer has it in the wrong place: its remedies are post_ln_fixes)."""
    facts = report.model
    if not facts.residual or facts.post_ln:
        return []
    normalized = facts.batchnorm or any(layer.kind in NORMALIZING for layer in report.layers)
    return [fixup_fix(report)] + (
        [] if normalized else [Fix("add normalization in each block (BatchNorm or LayerNorm)")]
    )


def vanishing_gradients(report: Report, thresholds: Thresholds) -> Verdict | None:
    ratio = report.gradient_ratio
    if ratio is None or not ratio < thresholds.vanishing_ratio:
        return None
    first, last = report.layers[0].name, report.layers[-1].name
    shrinks = f"shrinks {1 / ratio:.3g}x" if ratio > 0 else "vanishes entirely (every unit dead or saturated)"
    return Verdict(
        "vanishing_gradients",
        f"the gradient {shrinks} on its way back from {last} to {first}",
        signal_evidence(report, ratio),
        [*post_ln_fixes(report.model), *architecture_fixes(report.model)],
        [first],
    )


def exploding_gradients(report: Report, thresholds: Thresholds) -> Verdict | None:
    ratio = report.gradient_ratio
    spike = gradient_spike(report)
    grows = ratio is not None and ratio > thresholds.exploding_ratio
    spikes = spike is not None and spike > thresholds.spike_ratio
    if not (grows or spikes):
        return None
    first, last = report.layers[0].name, report.layers[-1].name
    summary = (
        f"the gradient grows {ratio:.3g}x on its way back from {last} to {first}"
        if grows
        else f"the global gradient norm spiked to {spike:.3g}x its median during training"
    )
    evidence = {**signal_evidence(report, ratio), "spike_ratio": spike}
    facts = report.model
    fixes = [
        *post_ln_fixes(facts),
        *residual_fixes(report),
        *architecture_fixes(facts),
        clip_fix(report, thresholds),
    ]
    return Verdict("exploding_gradients", summary, evidence, [f for f in fixes if f], [first])


def signal_layers(report: Report) -> list[LayerReport]:
    """The hidden layers the signal passes, embeddings left out: an embedding table's scale is a
    convention (BERT's std 0.02, which the LayerNorm after it undoes), not a signal that grew."""
    return [layer for layer in report.layers[:-1] if layer.kind != "embedding"] or report.layers


def activation_growth(report: Report) -> float | None:
    """std of the last hidden layer's activations / the first's (None if either is unknown or 0)."""
    hidden = signal_layers(report)
    first, last = hidden[0].stats["act_std"], hidden[-1].stats["act_std"]
    if first is None or last is None or first <= 0:
        return None
    return last / first


def exploding_activations(report: Report, thresholds: Thresholds) -> Verdict | None:
    """The signal's std grows more than `activation_growth`-fold from the first hidden layer to the
    last: each layer (or residual block) multiplies its variance by more than 1, so it grows
    exponentially with depth (Zhang et al., 2019, for residual networks without normalization)."""
    growth = activation_growth(report)
    if growth is None or not growth > thresholds.activation_growth:
        return None
    hidden = signal_layers(report)
    first, last = hidden[0].name, hidden[-1].name
    facts = report.model
    fixes = [*post_ln_fixes(facts), *residual_fixes(report), *architecture_fixes(facts)]
    return Verdict(
        "exploding_activations",
        f"the activations' std grows {growth:.3g}x with depth, from {first} to {last}",
        {
            **signal_evidence(report, report.gradient_ratio),
            "growth": growth,
            "threshold": thresholds.activation_growth,
        },
        fixes,
        [first, last],
    )


def gradient_spike(report: Report) -> float | None:
    """max / median of the global gradient norms a Monitor sampled, None without enough of them."""
    norms = finite(report.history.grad_norm) if report.history is not None else []
    if len(norms) < 3 or statistics.median(norms) <= 0:
        return None
    return max(norms) / statistics.median(norms)


def signal_evidence(report: Report, ratio: float | None) -> dict[str, Any]:
    hidden = report.layers[:-1] or report.layers
    return {
        "gradient_ratio": ratio,
        "out_grad_scale_first": report.layers[0].stats["out_grad_scale"],
        "out_grad_scale_last": report.layers[-1].stats["out_grad_scale"],
        "act_std_first": hidden[0].stats["act_std"],
        "act_std_last_hidden": hidden[-1].stats["act_std"],
        "activation": report.model.activation,
        "init": report.model.init,
    }


def over(report: Report, stat: str, kinds: tuple[str, ...], limit: float) -> dict[str, float]:
    """{layer: value} of the layers of `kinds` whose `stat` exceeds `limit`."""
    return {
        layer.name: layer.stats[stat]
        for layer in report.layers
        if layer.kind in kinds and layer.stats[stat] is not None and layer.stats[stat] > limit
    }


def saturation(report: Report, thresholds: Thresholds) -> Verdict | None:
    found = over(report, "saturated", BOUNDED, thresholds.saturated)
    if not found:
        return None
    worst = max(found, key=found.get)
    facts = report.model
    fixes = [bounded_fix(facts)] + ([] if facts.batchnorm else [guided(BATCHNORM_FIX, "batchnorm")])
    return Verdict(
        "saturation",
        f"{len(found)} layer(s) with over {thresholds.saturated:.0%} of their outputs saturated "
        f"(up to {found[worst]:.0%} in {worst})",
        {"saturated": found, "threshold": thresholds.saturated},
        fixes,
        list(found),
    )


def dead_units(report: Report, thresholds: Thresholds) -> Verdict | None:
    found = over(report, "dead", ("relu",), thresholds.dead)
    if not found:
        return None
    worst = max(found, key=found.get)
    fixes = [
        guided(
            f"ReLU with {found[worst]:.0%} of {worst}'s units dead: use leaky ReLU (alpha 0.2), ELU, SELU or "
            "Swish, which pass a gradient for negative inputs",
            "leaky_relu",
        )
    ]
    if report.model.init != "He":
        fixes.append(
            guided(
                f'ReLU with {report.model.init} initialization: use He initialization (init="he_normal")',
                "he_init",
            )
        )
    since = dead_since(report, worst, thresholds.dead)
    if report.history is not None:
        fixes.append(lower_lr(report, since, ": a large step can push a unit's inputs below 0 for good"))
    summary = (
        f"{len(found)} ReLU layer(s) with over {thresholds.dead:.0%} of their units dead on the batch "
        f"(up to {found[worst]:.0%} in {worst}"
    )
    summary += f", dead in every sampled step since step {since})" if since is not None else ")"
    return Verdict(
        "dead_units",
        summary,
        {"dead": found, "threshold": thresholds.dead, "dead_since": since},
        fixes,
        list(found),
    )


def dead_since(report: Report, layer: str, limit: float) -> int | None:
    """The sampled step from which `layer`'s dead fraction stayed above `limit` in every sample a
    Monitor took (on its training batches), the step the units died; None without such a history."""
    history = report.history
    if history is None or layer not in history.layers or not len(history.steps):
        return None
    dead = history.series("dead")[:, history.layers.index(layer)]
    alive = [i for i, value in enumerate(dead) if not value > limit]  # NaN: not known, not dead
    first = alive[-1] + 1 if alive else 0
    return int(history.steps[first]) if first < len(history.steps) else None


def learning_speeds(report: Report) -> tuple[str, dict[str, float]]:
    """Per layer, how fast it learns: the median update ratio a Monitor saw, or in a probe the
    relative gradient ||grad W|| / ||W|| (the update ratio of plain SGD, up to the learning rate)."""
    speeds = report.median_update_ratios()
    if speeds:
        return "update_ratio", speeds
    speeds = {}
    for layer in report.layers:
        grad, weight = layer.stats["weight_grad_norm"], layer.stats["weight_norm"]
        if grad is not None and weight:
            speeds[layer.name] = grad / weight
    return "relative_gradient", speeds


def uneven_learning(report: Report, thresholds: Thresholds) -> Verdict | None:
    measure, speeds = learning_speeds(report)
    speeds = {name: v for name, v in speeds.items() if math.isfinite(v) and v > 0}
    if len(speeds) < 2:
        return None
    slowest, fastest = min(speeds, key=speeds.get), max(speeds, key=speeds.get)
    spread = speeds[fastest] / speeds[slowest]
    if not spread > thresholds.uneven_ratio:
        return None
    fixes = [*post_ln_fixes(report.model), *architecture_fixes(report.model)]
    optimizer = report.history.optimizer if report.history is not None else ""
    if optimizer == "SGD":
        fixes.append(guided(f"use {ADAPTIVE_HINT}, instead of SGD", "nadam"))
    elif not optimizer:
        fixes.append(guided(f"train with {ADAPTIVE_HINT}", "nadam"))
    return Verdict(
        "uneven_learning",
        f"{fastest} learns {spread:.3g}x faster than {slowest} (by {measure.replace('_', ' ')})",
        {"measure": measure, "spread": spread, "slowest": slowest, "fastest": fastest, "per_layer": speeds},
        fixes,
        [slowest, fastest],
    )


def non_finite(report: Report, thresholds: Thresholds) -> Verdict | None:
    def layers_with(stat: str) -> list[str]:
        return [layer.name for layer in report.layers if (layer.stats[stat] or 0) > 0]

    activations, gradients = layers_with("act_nonfinite"), layers_with("out_grad_nonfinite")
    gradients += [
        layer.name
        for layer in report.layers
        if layer.stats["weight_norm"] is not None and layer.stats["weight_grad_norm"] is None
    ]
    layers = activations or list(dict.fromkeys(gradients))
    step = first_nonfinite_step(report)
    loss_bad = report.loss is not None and not math.isfinite(report.loss)
    bad = layers or step is not None or report.nonfinite_forward or loss_bad
    if not bad:
        return None
    where = report.nonfinite_forward
    if where == "inputs":
        fixes = [Fix("the input batch holds NaN or infinite values: clean or impute the data")]
    elif where:
        fixes = [
            Fix(
                f"{where} is the first module to output non-finite values from finite inputs: an overflow "
                "from weights grown too large, or a log or division of 0"
            )
        ]
    else:
        fixes = []
    fixes.append(lower_lr(report, step))
    fixes += post_ln_fixes(report.model)
    clip = clip_fix(report, thresholds)
    fixes += [clip] if clip else []
    if where:
        summary = f"non-finite values, first produced by {where}"
    elif report.nonfinite_backward:
        summary = f"non-finite gradients, first at the output of {report.nonfinite_backward}"
    elif layers:
        summary = f"non-finite weight gradients in {', '.join(layers)}"
    else:
        summary = "non-finite values during training"
    if step is not None:
        summary += f" (first seen at step {step})"
    evidence = {
        "loss": report.loss if report.loss is None or math.isfinite(report.loss) else str(report.loss),
        "first_forward": report.nonfinite_forward,
        "first_backward": report.nonfinite_backward,
        "activations": activations,
        "gradients": list(dict.fromkeys(gradients)),
        "first_step": step,
    }
    return Verdict("non_finite", summary, evidence, fixes, layers)


def first_nonfinite_step(report: Report) -> int | None:
    history = report.history
    if history is None or not len(history.steps):
        return None
    losses = np.asarray([0.0 if v is None else v for v in history.loss], dtype=float)  # None: not known
    bad = ~np.isfinite(losses) | ~np.isfinite(np.asarray(history.grad_norm, dtype=float))
    counts = [history.series(s) for s in ("act_nonfinite", "out_grad_nonfinite")]
    bad |= np.nansum(counts[0] + counts[1], axis=1) > 0
    return int(history.steps[int(np.argmax(bad))]) if bad.any() else None


RULES: tuple[Callable[[Report, Thresholds], Verdict | None], ...] = (
    non_finite,
    exploding_gradients,
    exploding_activations,
    vanishing_gradients,
    saturation,
    dead_units,
    uneven_learning,
)


def diagnose(report: Report, thresholds: Thresholds | None = None) -> list[Verdict]:
    """The verdicts of every rule that fires, or [healthy] with the numbers that say so.

    >>> import torch
    >>> from gradwell.diagnose import probe
    >>> from gradwell.models import mlp
    >>> model = mlp(8, 3, hidden=[16, 16], generator=torch.Generator().manual_seed(0))
    >>> x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 3
    >>> [verdict.name for verdict in diagnose(probe(model, x, y))]
    ['healthy']
    """
    thresholds = thresholds or Thresholds()
    verdicts = [v for rule in RULES if (v := rule(report, thresholds)) is not None]
    return verdicts or [healthy(report)]


def healthy(report: Report) -> Verdict:
    def largest(stat: str) -> float | None:
        values = finite([layer.stats[stat] for layer in report.layers])
        return max(values) if values else None

    measure, speeds = learning_speeds(report)
    speeds = finite(list(speeds.values()))
    spread = max(speeds) / min(speeds) if speeds and min(speeds) > 0 else None
    ratio = report.gradient_ratio
    numbers = [f"first/last layer gradient ratio {ratio:.3g}"] if ratio is not None else []
    numbers += [f"layer learning speeds within {spread:.3g}x"] if spread is not None else []
    return Verdict(
        "healthy",
        "no instability found" + (": " + ", ".join(numbers) if numbers else ""),
        {
            "gradient_ratio": ratio,
            "max_saturated": largest("saturated"),
            "max_dead": largest("dead"),
            "activation_growth": activation_growth(report),
            "speed_measure": measure,
            "speed_spread": spread,
        },
    )
