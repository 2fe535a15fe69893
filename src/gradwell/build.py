"""The recipe: a config becomes data, model, optimizer, schedule and training options.

Every command goes through here (``gradwell train``, ``diagnose``, ``compare``, ``claims``,
``transfer``), and so does the experiment runner, one seed at a time or seed-batched:

    recipe(config)          the data loaded and the device chosen: a Recipe, which builds the
                            model of any seed, its optimizer, the schedule spanning the run
    prepare(config)         one run's model, optimizer and schedule: a Prepared, which knows its
                            step count and trains with ``.fit()``

Everything a config names is built and checked here, before a run folder is made or a step is
taken, so a bad config fails fast and writes nothing. A [train] value given to `recipe` or
`prepare` (``prepare(config, epochs=3)``) replaces the config's before anything is sized by it:
a 1cycle schedule then spans the 3 epochs that are trained.

``schedule.max_lr = "find"`` (1cycle only) runs the learning-rate finder first, in `recipe`: on the
model of train.seed and its optimizer, over the training split with train.batch_size and
train.loss and lr_find's defaults (1e-5 to 10 over 200 steps, batch orders of seeds 0, 1, 2). Its
``minimum / 10`` (the chapter's rule) becomes max_lr in the recipe's config, so the run folder's
config.toml holds the rate used and a resumed run keeps it; ``Recipe.found`` keeps the search.
When the search suggests nothing (a flat or noisy curve) the recipe fails with a ConfigError
before anything is trained: falling back to some other rate would train with one nobody chose.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradwell import data as datasets
from gradwell import models, optim
from gradwell.activations import ACTIVATIONS, activation_info
from gradwell.config import Config, TrainConfig, check_call, check_types
from gradwell.errors import ConfigError, GradwellError, closest, unknown_name
from gradwell.memory import FLOAT32, TRAINING_COPIES, check_fits, readable
from gradwell.models import custom
from gradwell.train import Callback, History, distributed, fit
from gradwell.train.losses import check_data_fits_model
from gradwell.train.lr_find import LRSearch, lr_find

BUILDERS = {"mlp": models.mlp, "cnn": models.cnn}
DEFAULT_OPTIMIZER = "nadam"  # a config without optimizer.name: Adam with Nesterov momentum, Keras's defaults
log = logging.getLogger(__name__)
RUN_ARGUMENTS = ("checkpoint_dir", "resume", "progress", "explain_nonfinite")  # fit's, not [train]'s
FIND = "find"  # schedule.max_lr = "find": the learning-rate finder picks 1cycle's peak (see the module)
FIND_RULE = "minimum / 10"  # the chapter's rule, of gradwell.train.lr_find's suggestions
FIND_SEEDS = (0, 1, 2)  # lr_find's default: three batch orders, so that their spread can say "noisy"


def resolve_device(name: str) -> torch.device:
    """The device train.device names; under torchrun, this process's device whatever it names."""
    if distributed.active():
        return distributed.device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device = {name!r} is not a device; valid: auto, cpu, cuda, cuda:N"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"train.device = {name!r}: gradwell trains on cpu or cuda; valid: auto, cpu, cuda, cuda:N"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}, but CUDA is not available here; use 'auto' or 'cpu'")
    return device


def load_data(config: Config) -> datasets.Dataset:
    """The [data] section's dataset, standardized on its training split unless it says not to.

    ``standardize`` is true (the default), false, "feature" or "channel". True picks per channel
    for a cnn and for (C, H, W) images, whose every position a convolution sees alike, and per
    feature otherwise (each input of an MLP at mean 0 and variance 1, as the chapter does).
    ``train_samples`` and ``val_samples`` keep at most that many samples of those splits after
    the standardization (``gradwell.data.subsample``: a fixed draw, the same for every seed).
    """
    options = dict(config.data)
    name = options.pop("name", "mnist1d")
    limits = {key: options.pop(f"{key}_samples", None) for key in ("train", "val")}
    per = options.pop("standardize", True)
    if per not in (True, False, *datasets.PER) or not isinstance(per, bool | str):
        valid = ", ".join(map(repr, datasets.PER))
        raise ConfigError(f"data.standardize = {per!r} is not valid; valid: true, false, {valid}")
    dataset = datasets.load(name, **options)
    if per is True:
        images = config.model.get("kind") == "cnn" or len(dataset.feature_shape) == 3
        per = "channel" if images else "feature"
    dataset = datasets.standardize(dataset, per)[0] if per else dataset
    return datasets.subsample(dataset, **limits)


def model_builder(config: Config) -> tuple[Any, dict[str, Any]]:
    """The [model] section's builder and its options, their names and types checked.

    For ``kind = "python:module:factory"`` the builder is the user's factory, imported (so a
    typo in the spec fails before the data is loaded); its options are checked against its
    signature when it takes no ``**kwargs``, and passed through to it otherwise.
    """
    options = dict(config.model)
    kind = options.pop("kind", "mlp")
    if custom.is_custom(kind):
        factory = custom.import_factory(kind)
        custom.check_options(kind, factory, options)
        check_types("model", factory, options)
        return factory, options
    if not isinstance(kind, str) or kind not in BUILDERS:
        raise unknown_name("model kind", kind, [*BUILDERS, "python:module:factory"])
    builder = BUILDERS[kind]
    check_call("model", builder, options, skip=("in_features", "in_shape", "out_features", "generator"))
    return builder, options


def check_sections(config: Config) -> None:
    """What can be checked of [model], [optimizer] and [schedule] without the data: names and
    types, and the activation's name, so that a typo fails before a dataset is loaded or made."""
    builder, options = model_builder(config)
    activation = options.get("activation")
    builtin = builder in BUILDERS.values()  # a user factory's options are its own to check
    if builtin and isinstance(activation, str) and activation_info(activation) is None:
        raise ConfigError(f"model.activation: {unknown_name('activation', activation, ACTIVATIONS)}")
    values = dict(config.optimizer)
    name = check_name("optimizer", values.pop("name", DEFAULT_OPTIMIZER), optim.OPTIMIZERS)
    check_types("optimizer", optim.OPTIMIZERS[name], values)
    # the options every optimizer takes through GradwellOptimizer
    check_types("optimizer", optim.GradwellOptimizer, {k: v for k, v in values.items() if k in optim.OPTIONS})
    values = dict(config.schedule)
    name = values.pop("name", "none")
    if name != "none":
        check_name("schedule", name, optim.SCHEDULES, "none")
        check_find(name, values)
        check_types("schedule", optim.SCHEDULES[name], {k: v for k, v in values.items() if v != FIND})
    elif values:  # no schedule: an option given to it would be silently unused
        named = "schedule.name is 'none'" if "name" in config.schedule else "'none' by default"
        raise ConfigError(
            f"schedule.{next(iter(values))} is set, but no schedule is named ({named}); "
            f"name one of {', '.join(optim.SCHEDULES)}, or leave the option out"
        )


def check_find(name: str, values: dict[str, Any]) -> None:
    """ConfigError for "find" anywhere but onecycle's max_lr, or any other text as its max_lr.

    >>> check_find("onecycle", {"max_lr": "fnd"})
    Traceback (most recent call last):
    ...
    gradwell.errors.ConfigError: schedule.max_lr = 'fnd' is not valid (did you mean 'find'?); valid: ...
    """
    for key, value in values.items():
        if name == "onecycle" and key == "max_lr" and isinstance(value, str) and value != FIND:
            raise ConfigError(
                f"schedule.max_lr = {value!r} is not valid{closest(value, [FIND])}; valid: a rate above 0, "
                f"or {FIND!r} (the learning-rate finder's {FIND_RULE})"
            )
        if value == FIND and (name, key) != ("onecycle", "max_lr"):
            raise ConfigError(
                f"schedule.{key} = {FIND!r} (schedule {name!r}): only max_lr of the onecycle schedule can be "
                f"found by the learning-rate finder; give schedule.{key} a value"
            )


def check_name(section: str, name: Any, table: dict[str, Any], *others: str) -> str:
    """`name` when `table` (or `others`) has it; the error listing the valid names otherwise."""
    if not isinstance(name, str) or name not in table:
        raise unknown_name(section, name, [*table, *others])
    return name


def build_model(config: Config, dataset: datasets.Dataset) -> nn.Module:
    """The [model] section's model for `dataset`, initialized from a generator seeded by train.seed
    (a user factory's under torch's CPU generator seeded by it: gradwell.models.custom)."""
    builder, options = model_builder(config)
    kind = config.model.get("kind")
    if custom.is_custom(kind):  # seeded and checked there: see gradwell.models.custom
        binary = config.train.loss == "binary_cross_entropy"
        shape, classes = dataset.feature_shape, dataset.num_classes
        return custom.build_custom(kind, shape, classes, options, seed=config.train.seed, binary=binary)
    generator = torch.Generator().manual_seed(config.train.seed)
    try:
        return builder(dataset.feature_shape, dataset.num_classes, **options, generator=generator)
    except ConfigError:
        raise
    except GradwellError as error:  # the builder names the value; say which key of [model] holds it
        raise ConfigError(f"{quoted_key('model', options, str(error))}: {error}") from None
    except (RuntimeError, MemoryError, OverflowError) as error:  # a size too large to allocate
        needed = re.search(r"allocate (\d+) bytes", str(error))
        reason = f"one of its tensors would need {readable(int(needed[1]))}" if needed else str(error)
        reason = reason or "out of memory"  # a MemoryError has no message
        raise ConfigError(
            f"the model of [model] {options} for {dataset.num_classes} classes of inputs "
            f"{tuple(dataset.feature_shape)} cannot be built: {reason.splitlines()[-1]}"
        ) from None


def quoted_key(section: str, options: dict[str, Any], message: str) -> str:
    """``section.key`` for the option whose value `message` quotes, else ``[section]``.

    A quoted list or table is the likeliest culprit, then an option the message also names, then
    the longest value quoted; a short number or bool quoted by chance ("2" in "size 2") does not count.

    >>> quoted_key("model", {"activation": "elu", "pool_every": 2, "activation_options": {"x": 2}},
    ...            "bad options {'x': 2} for activation 'elu'")
    'model.activation_options'
    >>> quoted_key("model", {"kernel_size": 3}, "in_shape (8, 8) is too small for 3 poolings of size 2")
    '[model]'
    """

    def rank(key: str) -> tuple[bool, bool, int]:
        value = options[key]
        named = re.search(rf"\b{re.escape(key)}\b", message) is not None
        return isinstance(value, (list, tuple, dict)), named, len(repr(value))

    quoted = [k for k, v in options.items() if repr(v) in message or f"={v!r}" in message]
    likely = [k for k in quoted if rank(k) >= (False, False, 3)]  # a table, a list, named, or long
    return f"{section}.{max(likely, key=rank)}" if likely else f"[{section}]"


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The [optimizer] section's optimizer over the model's parameters (Nadam by default)."""
    options = dict(config.optimizer)
    return optim.create(options.pop("name", DEFAULT_OPTIMIZER), model.parameters(), **options)


def build_schedule(config: Config, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """The config's schedule over a run of `steps` optimizer steps (None for name = "none").

    1cycle spans the run by default: its last rate is the one the last step uses.
    """
    options = dict(config.schedule)
    name = options.pop("name", "none")
    if name == "none":
        return None
    if name == "onecycle":
        if options.get("max_lr") == FIND:  # `recipe` replaces it; a config not built through it has not
            raise ConfigError(f"schedule.max_lr = {FIND!r} is found by gradwell.build.recipe: build with it")
        options.setdefault("total_steps", steps)
        options.setdefault("max_lr", float(optimizer.param_groups[0]["lr"]))
    return optim.schedule(name, optimizer, **options)


def found_rate(found: LRSearch) -> float:
    """The search's minimum / 10, or the ConfigError that says why there is none.

    >>> from gradwell.train.lr_find import LRCurve
    >>> flat = LRSearch([LRCurve(0, [1e-3], [2.3], "reached end_lr 10")], {FIND_RULE: None}, ["flat"])
    >>> found_rate(flat)
    Traceback (most recent call last):
    ...
    gradwell.errors.ConfigError: schedule.max_lr = 'find': the learning-rate finder suggests no rate ...
    """
    rate = found.suggestions.get(FIND_RULE)
    if rate is None:
        raise ConfigError(
            f"schedule.max_lr = {FIND!r}: the learning-rate finder suggests no rate "
            f"({'; '.join(found.warnings)}); give schedule.max_lr a rate (gradwell lr-find shows the curves)"
        )
    return rate


def with_train(config: Config, **train: Any) -> Config:
    """`config` with [train] values replaced (checked, as a config's own are)."""
    return dataclasses.replace(config, train=config.train.replace(**train)) if train else config


@dataclass(frozen=True)
class Recipe:
    """A config with its data loaded and its device chosen: what every run of it is built from.

    >>> from gradwell import config as configs
    >>> config = configs.from_dict({"data": {"name": "digits"}, "train": {"epochs": 2}})
    >>> r = recipe(config)
    >>> r.steps, type(r.model(seed=1)).__name__
    (42, 'Sequential')
    """

    config: Config
    dataset: datasets.Dataset
    device: torch.device
    found: LRSearch | None = None  # the learning-rate finder's search, for schedule.max_lr = "find"

    @property
    def options(self) -> TrainConfig:
        return self.config.train

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole run: what a schedule spanning it is sized for."""
        return self.options.steps(len(self.dataset.train))

    def model(self, seed: int | None = None) -> nn.Module:
        """The model of `seed` (train.seed by default), on the device."""
        config = self.config if seed is None else with_train(self.config, seed=seed)
        return build_model(config, self.dataset).to(self.device)

    def check(self, model: nn.Module) -> None:
        """DataError before training when the data cannot go through `model`."""
        train = self.dataset.train.to(self.device)
        check_data_fits_model(model, train, self.options.loss)

    def trainable(self, model: nn.Module) -> None:
        """`check`, and an error (gradwell.memory) when training `model` would not fit in memory."""
        self.check(model)
        count = sum(p.numel() for p in model.parameters())
        check_fits(f"training the model of [model] ({count:,} parameters)", count * FLOAT32 * TRAINING_COPIES)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(self.config, model)

    def schedule(self, optimizer: torch.optim.Optimizer) -> Any:
        return build_schedule(self.config, optimizer, self.steps)

    def find_max_lr(self) -> Recipe:
        """This recipe with schedule.max_lr = "find" replaced by the learning-rate finder's
        minimum / 10 on the model of train.seed (see the module), and the search kept."""
        model = self.model()
        self.trainable(model)
        found = lr_find(
            model, self.dataset, self.optimizer(model), seeds=FIND_SEEDS,
            batch_size=self.options.batch_size, loss=self.options.loss,
        )  # fmt: skip
        # under torchrun, process 0's search for all: ranks whose float rounding differed would
        # otherwise train with different rates, or some fail while the others wait
        found = distributed.broadcast(found)
        max_lr = found_rate(found)
        log.info("schedule.max_lr = %r: the learning-rate finder's %s is %.4g", FIND, FIND_RULE, max_lr)
        config = dataclasses.replace(self.config, schedule={**self.config.schedule, "max_lr": max_lr})
        return dataclasses.replace(self, config=config, found=found)

    def prepare(self, seed: int | None = None) -> Prepared:
        """One run: the model of `seed`, checked against the data, its optimizer and schedule."""
        config = self.config if seed is None else with_train(self.config, seed=seed)
        model = build_model(config, self.dataset).to(self.device)
        self.trainable(model)
        optimizer = build_optimizer(config, model)
        return Prepared(dataclasses.replace(self, config=config), model, optimizer, self.schedule(optimizer))


@dataclass
class Prepared:
    """Everything one run needs, built and checked from a config; ``.fit()`` trains it."""

    recipe: Recipe
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any

    @property
    def config(self) -> Config:
        return self.recipe.config

    @property
    def dataset(self) -> datasets.Dataset:
        return self.recipe.dataset

    @property
    def device(self) -> torch.device:
        return self.recipe.device

    @property
    def steps(self) -> int:
        return self.recipe.steps

    @property
    def found(self) -> dict[str, Any] | None:
        """For schedule.max_lr = "find": the rate used, the rule and the search (curves left out),
        as a run folder's result.json records it; None otherwise."""
        if self.recipe.found is None:
            return None
        search = {k: v for k, v in self.recipe.found.to_dict().items() if k != "curves"}
        return {"max_lr": self.config.schedule["max_lr"], "rule": FIND_RULE, **search}

    def fit(self, callbacks: list[Callback] | tuple[Callback, ...] = (), **overrides: Any) -> History:
        """Train with the config's [train] options, its early stopping before `callbacks`.

        `overrides` are fit's run arguments (checkpoint_dir, resume, progress, explain_nonfinite)
        or [train] values that leave the step count alone; epochs and batch_size size the schedule,
        so they go to `prepare`.
        """
        run = {"progress": self.config.output.progress}
        run.update({key: overrides.pop(key) for key in RUN_ARGUMENTS if key in overrides})
        options = self.recipe.options.replace(**overrides) if overrides else self.recipe.options
        if options.steps(len(self.dataset.train)) != self.steps:
            raise ConfigError(
                f"{', '.join(overrides)} changes the run's step count, which its schedule was sized "
                "for: give it to gradwell.build.prepare instead"
            )
        return fit(
            self.model, self.dataset, optimizer=self.optimizer, scheduler=self.scheduler,
            callbacks=[*options.callbacks(), *callbacks], device=self.device, options=options, **run,
        )  # fmt: skip


def recipe(config: Config, dataset: datasets.Dataset | None = None, **train: Any) -> Recipe:
    """`config` (with [train] values `train` replaced) and its data (`dataset`, or the [data]
    section's, loaded), on the device train.device names; schedule.max_lr = "find" found here."""
    config = with_train(config, **train)
    check_sections(config)
    device = resolve_device(config.train.device)
    dataset = dataset if dataset is not None else load_data(config)
    check_validation(config, dataset)
    made = Recipe(config, dataset, device)
    return made.find_max_lr() if config.schedule.get("max_lr") == FIND else made


def check_validation(config: Config, dataset: datasets.Dataset) -> None:
    """ConfigError when train.early_stopping watches a validation loss the data cannot give: a run
    would otherwise train its first epoch and write its folder before EarlyStopping finds out."""
    patience = config.train.early_stopping
    if patience is not None and len(dataset.val) == 0:
        fraction = config.data.get("val_fraction", 0.1)
        raise ConfigError(
            f"train.early_stopping = {patience} stops on val_loss, but {dataset.name} has no validation "
            f"samples (data.val_fraction = {fraction!r}); give data.val_fraction > 0, or leave "
            "train.early_stopping out"
        )


def prepare(config: Config, dataset: datasets.Dataset | None = None, **train: Any) -> Prepared:
    """Load the data and build model, optimizer and schedule; every config error surfaces here.

    >>> from gradwell import config as configs
    >>> config = configs.from_dict({"data": {"name": "digits"}, "schedule": {"name": "onecycle"}})
    >>> prepared = prepare(config, epochs=2, batch_size=128)
    >>> prepared.steps, prepared.scheduler.total_steps
    (22, 22)
    """
    return recipe(config, dataset, **train).prepare()
