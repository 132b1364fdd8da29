"""Search settings: the spec's `search` section, a recipe (`default` or `paper`) and the options
a caller gives explicitly, merged into one checked `Settings`. Imports neither torch nor data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from parnasc.errors import OptionError
from parnasc.lang.spec import SearchSpec

RECIPES = ("default", "paper")
COSTS = ("flops", "latency")
MODES = ("joint", "alternate")

# The paper's settings: plain SGD, lr 1e-4 for the weights and 0.1 for the decision variables,
# no warm-up, joint steps, the plain softmax.
PAPER_RECIPE: dict[str, Any] = {
    "weights": {"name": "sgd", "lr": 1e-4, "momentum": 0.0, "wd": 0.0, "nesterov": 0},
    "arch": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "wd": 0.0, "nesterov": 0},
    "warmup": 0,
    "mode": "joint",
    "tau": 1.0,
    "tau_end": 1.0,
}


@dataclass(frozen=True)
class Recipe:
    """How the weights are trained: in the search (`schedule`, `augment`) and in retraining
    (all fields)."""

    schedule: str  # "cosine" (from the optimizer's lr to 0 over the run) or "constant"
    augment: bool  # random 32-crop of the 4-padded image + horizontal flip, per batch
    label_smoothing: float  # of retraining's cross entropy
    ema: float | None  # retraining: decay per step of the weight average evaluated and kept
    decay_norms: bool  # weight decay on batch-norm and bias parameters too
    weights: dict[str, Any] | None = None  # retraining's optimizer (None: the spec's)
    cutout: int = 0  # retraining: side of the square of each image set to the mean (0: none)


TRAIN_RECIPES: dict[str, Recipe] = {
    # The best measured on the full data (docs/search.md, "Training recipe").
    "default": Recipe("cosine", True, 0.1, 0.999, False),
    # The paper's: SGD at a constant lr 0.0001, no augmentation, nothing else it does not state.
    "paper": Recipe("constant", False, 0.0, None, True, weights=PAPER_RECIPE["weights"]),
}


def recipe(name: str) -> Recipe:
    """The recipe `name` (`default` or `paper`)."""
    if name not in TRAIN_RECIPES:
        raise OptionError(f"--recipe {name}: expected one of {', '.join(RECIPES)}")
    return TRAIN_RECIPES[name]


@dataclass(frozen=True)
class Settings:
    """Everything that determines a search run (recorded in every output)."""

    alpha: float
    beta: float
    cost: str
    epochs: int
    warmup: int
    batch: int
    seed: int
    mode: str
    val_fraction: float
    cores: int
    weights: dict[str, Any]
    arch: dict[str, Any]
    n_train: int | None = None
    recipe: str = "default"
    tau: float = 1.0  # softmax temperature of the architecture at the first search step
    tau_end: float = 1.0  # ... and at the last (annealed geometrically in between)

    def temperature(self, progress: float) -> float:
        """The architecture's softmax temperature at `progress` in [0, 1] of the search
        epochs (after the warm-up): geometric from `tau` to `tau_end`."""
        p = min(1.0, max(0.0, progress))
        return float(self.tau * (self.tau_end / self.tau) ** p)

    @classmethod
    def from_spec(cls, s: SearchSpec, cores: int, **overrides: Any) -> Settings:
        """The spec's search section for `cores` cores; overrides that are not None win."""
        base: dict[str, Any] = {
            "alpha": s.alpha,
            "beta": s.beta,
            "cost": s.cost,
            "epochs": s.epochs,
            "warmup": s.warmup,
            "batch": s.batch,
            "seed": s.seed,
            "mode": s.mode,
            "val_fraction": s.val_fraction,
            "cores": cores,
            "weights": s.weights.model_dump(),
            "arch": s.arch.model_dump(),
            "tau": s.tau,
            "tau_end": s.tau_end,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass(frozen=True)
class SearchOptions:
    """The search settings a caller gives explicitly; None leaves the spec's (or the recorded
    run's) value. `train_images` is `Settings.n_train`."""

    cores: int | None = None
    recipe: str | None = None
    alpha: float | None = None
    beta: float | None = None
    cost: str | None = None
    mode: str | None = None
    epochs: int | None = None
    warmup: int | None = None
    batch: int | None = None
    seed: int | None = None
    train_images: int | None = None
    tau: float | None = None
    tau_end: float | None = None

    def check(self) -> None:
        """Refuse values no run can take (a word outside its choices, fewer than one core)."""
        for name, value, allowed in (
            ("--cost", self.cost, COSTS),
            ("--mode", self.mode, MODES),
            ("--recipe", self.recipe, RECIPES),
        ):
            if value is not None and value not in allowed:
                raise OptionError(f"{name} {value}: expected one of {', '.join(allowed)}")
        if self.cores is not None and self.cores < 1:
            raise OptionError(f"--cores {self.cores}: must be at least 1")


def make_settings(search: SearchSpec, cores: int, options: SearchOptions) -> Settings:
    """The settings of a new search on `cores` cores: the spec's `search` section, then the
    recipe's values (`paper`), then every option given; checked like the spec (`validate`)."""
    given = {
        k: v
        for k, v in asdict(options).items()
        if v is not None and k not in ("cores", "recipe", "train_images")
    }
    if options.train_images is not None:
        given["n_train"] = options.train_images
    merged = {**PAPER_RECIPE, **given} if options.recipe == "paper" else given
    settings = Settings.from_spec(search, cores, recipe=options.recipe or "default", **merged)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Check settings with the rules of the spec's search section; an OptionError names the
    option as the command line spells it (`--beta -1.0: must be ...`)."""
    from pydantic import ValidationError

    values = {k: v for k, v in asdict(settings).items() if k in SearchSpec.model_fields}
    try:
        SearchSpec.model_validate(values)
    except ValidationError as exc:
        e = exc.errors()[0]
        name = str(e["loc"][0]).replace("_", "-")
        msg = str(e["msg"]).replace("Input should be", "must be")
        raise OptionError(f"--{name} {values.get(str(e['loc'][0]))}: {msg}") from None
    if settings.n_train is not None and settings.n_train < 20:
        raise OptionError(f"--train-images {settings.n_train}: need at least 20")


__all__ = [
    "COSTS",
    "MODES",
    "PAPER_RECIPE",
    "RECIPES",
    "TRAIN_RECIPES",
    "Recipe",
    "SearchOptions",
    "Settings",
    "make_settings",
    "recipe",
    "validate",
]
