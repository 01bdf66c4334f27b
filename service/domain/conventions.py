"""Update rules as data: bases, decay conventions, aliases, their exact rule texts, default grids.

An optimizer name is ``BASE`` or ``BASE:CONVENTION``. The *base* is the direction a step moves in
(SGD with momentum, Adam, Lion, RAdam, NAdam, Adafactor, Muon); the *convention* is where the
weight decay sits and what scales it. With ``lr`` the base learning rate, ``eta_t`` the schedule
multiplier (the group's current lr over its lr at build, 1 for a constant schedule) and ``wd`` the
decay coefficient, the five conventions apply, every step, to theta *before* the step:

============  =====================================================  ===============================
convention    decay                                                  reference implementations
============  =====================================================  ===============================
l2            g <- g + wd*theta, before the base direction           torch.optim SGD/Adam/RAdam/NAdam
lr            theta <- theta*(1 - lr*eta_t*wd)                       torch.optim.AdamW/Muon/Adafactor,
                                                                     lion-pytorch
schedule      theta <- theta*(1 - eta_t*wd)                          the paper's SGDW/AdamW,
                                                                     lion-pytorch decoupled_weight_decay
constant      theta <- theta*(1 - wd)                                TF-Addons AdamW, pytorch-optimizer
                                                                     fixed_decay
corrected     theta <- theta*(1 - lr*eta_t**2*wd)                    timm corrected_weight_decay (AdamC)
============  =====================================================  ===============================

A bare base means the convention of its reference implementation's ``weight_decay`` argument
(:data:`REFERENCE_CONVENTION`). The five names the service started with stay as aliases with
their old meaning (:data:`ALIASES`). Every formula is checked against its source in
``docs/update-rules.md``.

This module is pure Python (no torch): the API validates names and lists rules with it, and the
workers (``workers.optim``) build the optimizers it describes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Base directions, in the order listings show them.
BASES: tuple[str, ...] = ("sgd", "adam", "lion", "radam", "nadam", "adafactor", "muon")
#: Decay conventions, in the order listings show them.
CONVENTIONS: tuple[str, ...] = ("l2", "lr", "schedule", "constant", "corrected")

#: The convention a bare ``BASE`` means: what its reference implementation's weight_decay does.
REFERENCE_CONVENTION: dict[str, str] = {
    "sgd": "l2", "adam": "l2", "radam": "l2", "nadam": "l2",
    "lion": "lr", "adafactor": "lr", "muon": "lr",
}

#: Names that are neither ``BASE`` nor ``BASE:CONVENTION``, and what they stand for.
ALIASES: dict[str, str] = {"sgdw": "sgd:schedule", "adamw": "adam:schedule", "adamw_torch": "adam:lr"}

#: The five names of the paper's comparison (listed first wherever names are listed).
LEGACY_NAMES: tuple[str, ...] = ("sgd", "sgdw", "adam", "adamw", "adamw_torch")

#: Base -> family: bases whose lr means the same step size share lr windows and heat-map axes.
FAMILY: dict[str, str] = {
    "sgd": "sgd", "adam": "adam", "radam": "adam", "nadam": "adam",
    "lion": "lion", "adafactor": "adafactor", "muon": "muon",
}

#: Base -> where its reference implementation lives (the source its exactness test runs).
REFERENCE: dict[str, str] = {
    "sgd": "torch.optim.SGD(momentum=0.9)",
    "adam": "torch.optim.Adam / torch.optim.AdamW",
    "lion": "lion_pytorch.Lion (lion-pytorch)",
    "radam": "torch.optim.RAdam",
    "nadam": "torch.optim.NAdam",
    "adafactor": "torch.optim.Adafactor",
    "muon": "torch.optim.Muon (hidden 2-D weights) + the adam base for every other parameter",
}

#: Base -> title.
BASE_TITLE: dict[str, str] = {
    "sgd": "SGD with momentum",
    "adam": "Adam",
    "lion": "Lion",
    "radam": "RAdam",
    "nadam": "NAdam",
    "adafactor": "Adafactor",
    "muon": "Muon",
}

#: Base -> its direction and step, exactly as implemented (lr*eta_t is the step size a scheduler
#: leaves in the group; defaults: momentum 0.9; Adam b1=0.9, b2=0.999, eps=1e-8; Lion b1=0.9,
#: b2=0.99; NAdam momentum_decay=4e-3; Adafactor beta2_decay=-0.8, eps=(float32 eps, 1e-3), d=1;
#: Muon momentum 0.95, Nesterov, 5 Newton-Schulz steps with (3.4445, -4.7750, 2.0315) in bfloat16).
BASE_RULE: dict[str, str] = {
    "sgd": "b <- momentum*b + g; theta <- theta - lr*eta_t*b",
    "adam": ("m <- b1*m + (1-b1)*g; v <- b2*v + (1-b2)*g^2; "
             "theta <- theta - lr*eta_t*(m/(1-b1^t))/(sqrt(v/(1-b2^t)) + eps)"),
    "lion": "u = sign(b1*m + (1-b1)*g); theta <- theta - lr*eta_t*u; m <- b2*m + (1-b2)*g",
    "radam": ("Adam's m, v; rho_t = rho_inf - 2t*b2^t/(1-b2^t), rho_inf = 2/(1-b2) - 1; if rho_t > 5: "
              "theta <- theta - lr*eta_t*r_t*(m/(1-b1^t))*sqrt(1-b2^t)/(sqrt(v) + eps), "
              "r_t = sqrt((rho_t-4)(rho_t-2)rho_inf/((rho_inf-4)(rho_inf-2)rho_t)); "
              "else theta <- theta - lr*eta_t*m/(1-b1^t)"),
    "nadam": ("mu_t = b1*(1 - 0.5*0.96^(t*momentum_decay)), P_t = mu_1*...*mu_t; Adam's m, v; "
              "theta <- theta - lr*eta_t*((1-mu_t)/(1-P_t)*g + mu_{t+1}/(1-P_t*mu_{t+1})*m)"
              "/(sqrt(v/(1-b2^t)) + eps)"),
    "adafactor": ("per tensor: beta2_t = 1 - t^-0.8; matrices (last two axes): row/column means of g^2 "
                  "as EMAs R, C, vhat = R C / mean(R); vectors: v <- EMA of g^2; u = g/sqrt(max(vhat, eps1^2)); "
                  "theta <- theta - max(1e-3, RMS(theta))*min(lr*eta_t, 1/sqrt(t))*u/max(1, RMS(u)) "
                  "(RMS(theta) before the decay)"),
    "muon": ("hidden 2-D weights (conv kernels flattened to out x rest, the output layer excluded): "
             "b <- 0.95*b + 0.05*g; O = NewtonSchulz5(g + 0.95*(b - g)); "
             "theta <- theta - lr*eta_t*sqrt(max(1, rows/cols))*O; every other parameter: the adam base"),
}

#: Convention -> its decay, exactly as implemented (theta before the step).
CONVENTION_RULE: dict[str, str] = {
    "l2": "g <- g + wd*theta",
    "lr": "theta <- theta*(1 - lr*eta_t*wd)",
    "schedule": "theta <- theta*(1 - eta_t*wd)",
    "constant": "theta <- theta*(1 - wd)",
    "corrected": "theta <- theta*(1 - lr*eta_t^2*wd)",
}

#: Convention -> one line on what scales the decay and who uses it.
CONVENTION_TEXT: dict[str, str] = {
    "l2": "L2: decay added to the gradient, so it goes through the base direction (momentum, "
          "preconditioner, sign, orthogonalization)",
    "lr": "decoupled, multiplied by lr (torch.optim.AdamW, Muon, Adafactor, lion-pytorch, optax, Keras)",
    "schedule": "decoupled, scaled by the schedule but not by lr (the paper's SGDW/AdamW; lion-pytorch "
                "decoupled_weight_decay=True; composer's Decoupled*W)",
    "constant": "decoupled, the same every step: neither lr nor the schedule scales it (TF-Addons "
                "AdamW, pytorch-optimizer fixed_decay)",
    "corrected": "decoupled, proportional to the squared schedule: lr*eta_t^2 = eta_t^2*lr_max (timm "
                 "corrected_weight_decay, AdamC)",
}

#: Convention -> how a decay coefficient converts to the schedule convention's (per-step fraction at
#: eta_t = 1): wd_schedule = wd * lr**LR_POWER (None: L2 has no decoupled equivalent).
LR_POWER: dict[str, int | None] = {"l2": None, "lr": 1, "schedule": 0, "constant": 0, "corrected": 1}
#: Convention -> the schedule's factor in its per-step decay (s_t, 1 or s_t^2; None for L2). Two
#: conventions with the same factor describe the same trajectories under a rescaled coefficient.
SCHEDULE_FACTOR: dict[str, str | None] = {"l2": None, "lr": "s", "schedule": "s", "constant": "1", "corrected": "s2"}

#: Titles the five original names keep.
LEGACY_TITLE: dict[str, str] = {
    "sgd": "SGD with momentum + L2",
    "sgdw": "SGDW (paper, Algorithm 1)",
    "adam": "Adam + L2",
    "adamw": "AdamW (paper, Algorithm 2)",
    "adamw_torch": "AdamW as in torch.optim.AdamW",
}


@dataclass(frozen=True)
class PluginBase:
    """A base an installed plugin adds (``service.domain.plugins`` registers it with :func:`register_base`)."""

    title: str
    family: str
    reference: str
    reference_convention: str
    rule: str
    supported: tuple[str, ...]
    lr: tuple[float, float, int]
    wd: dict[str, tuple[float, float, int]]


#: Bases installed plugins add, by name (empty until ``service.domain.plugins.registry()`` runs).
PLUGIN_BASES: dict[str, PluginBase] = {}


def register_base(name: str, *, title: str, family: str, reference: str, reference_convention: str, rule: str,
                  supported: tuple[str, ...], lr: tuple[float, float, int],
                  wd: dict[str, tuple[float, float, int]]) -> None:
    """Make ``name`` (and ``name:CONVENTION`` for each supported convention) a valid optimizer name."""
    if name in BASES or name in ALIASES:
        raise ValueError(f"base {name!r} is built in")
    PLUGIN_BASES[name] = PluginBase(title, family, reference, reference_convention, rule, tuple(supported), lr, dict(wd))


def all_bases() -> tuple[str, ...]:
    """The built-in bases, then every installed plugin's."""
    return BASES + tuple(b for b in PLUGIN_BASES if b not in BASES)


def base_family(base: str) -> str:
    return FAMILY[base] if base in FAMILY else PLUGIN_BASES[base].family


def base_title(base: str) -> str:
    return BASE_TITLE[base] if base in BASE_TITLE else PLUGIN_BASES[base].title


def base_rule(base: str) -> str:
    return BASE_RULE[base] if base in BASE_RULE else PLUGIN_BASES[base].rule


def base_reference(base: str) -> str:
    return REFERENCE[base] if base in REFERENCE else PLUGIN_BASES[base].reference


def base_reference_convention(base: str) -> str:
    return REFERENCE_CONVENTION[base] if base in REFERENCE_CONVENTION else PLUGIN_BASES[base].reference_convention


def base_conventions(base: str) -> tuple[str, ...]:
    """The conventions ``base`` may be combined with (every one for a built-in)."""
    return CONVENTIONS if base in BASES else PLUGIN_BASES[base].supported


def base_lr(base: str) -> tuple[float, float, int]:
    return BASE_LR[base] if base in BASE_LR else PLUGIN_BASES[base].lr


class UnknownOptimizer(ValueError):
    """A name that is no base, no ``BASE:CONVENTION`` and no alias; the message lists valid ones."""


@dataclass(frozen=True)
class UpdateRule:
    """One optimizer: its base direction and its decay convention."""

    name: str
    base: str
    convention: str

    @property
    def canonical(self) -> str:
        return f"{self.base}:{self.convention}"

    @property
    def family(self) -> str:
        return base_family(self.base)

    @property
    def title(self) -> str:
        if self.name in LEGACY_TITLE:
            return LEGACY_TITLE[self.name]
        return f"{base_title(self.base)}, {self.convention} decay"

    @property
    def decay_convention(self) -> str:
        return CONVENTION_TEXT[self.convention]

    @property
    def rule(self) -> str:
        return rule_text(self.base, self.convention)

    @property
    def decoupled(self) -> bool:
        return self.convention != "l2"


def valid_names_message() -> str:
    return (f"an optimizer is BASE or BASE:CONVENTION with BASE one of the installed bases "
            f"{', '.join(all_bases())} and "
            f"CONVENTION one of {', '.join(CONVENTIONS)}, or one of the aliases {', '.join(ALIASES)}")


def parse(name: object) -> UpdateRule:
    """The rule ``name`` stands for; :class:`UnknownOptimizer` (a ValueError) names what is wrong."""
    if not isinstance(name, str):
        raise UnknownOptimizer(f"unknown optimizer {name!r}: {valid_names_message()}")
    target = ALIASES.get(name, name)
    base, sep, convention = target.partition(":")
    if base not in BASES and base not in PLUGIN_BASES:
        raise UnknownOptimizer(f"unknown optimizer {name!r}: unknown base {base!r}; {valid_names_message()}")
    if not sep:
        convention = base_reference_convention(base)
    elif convention not in CONVENTIONS:
        raise UnknownOptimizer(
            f"unknown optimizer {name!r}: unknown convention {convention!r}; {valid_names_message()}")
    elif convention not in base_conventions(base):
        raise UnknownOptimizer(
            f"unknown optimizer {name!r}: the plugin base {base!r} supports only the conventions "
            f"{', '.join(base_conventions(base))}")
    return UpdateRule(name, base, convention)


def is_known(name: object) -> bool:
    try:
        parse(name)
    except UnknownOptimizer:
        return False
    return True


def rule_text(base: str, convention: str) -> str:
    """The exact update, decay first (it acts on theta before the step), then the base's step."""
    decay = CONVENTION_RULE[convention]
    if base == "muon":
        return f"{decay} on every parameter; then {BASE_RULE['muon']}"
    return f"{decay}; then {base_rule(base)}"


def all_names() -> tuple[str, ...]:
    """Every name a spec may use: the legacy five, the bare bases, then every BASE:CONVENTION."""
    names = list(LEGACY_NAMES)
    names += [b for b in BASES if b not in names]
    names += [f"{b}:{c}" for b in BASES for c in CONVENTIONS]
    for b, plugin in PLUGIN_BASES.items():
        names += [b, *(f"{b}:{c}" for c in plugin.supported)]
    return tuple(names)


# ------------------------------------------------------------------------------- default grids

#: (min, max, num) of a log-spaced axis.
AxisTuple = tuple[float, float, int]

#: Default grids of the five original names, calibrated on digits_mlp (docs/design-notes.md has the runs).
_LEGACY_GRIDS: dict[str, dict[str, AxisTuple]] = {
    "sgd:l2": {"lr": (1e-3, 1.0, 8), "wd": (1e-5, 1e-1, 8)},
    "sgd:schedule": {"lr": (1e-3, 1.0, 8), "wd": (1e-5, 1e-1, 8)},
    "adam:l2": {"lr": (1e-4, 1e-1, 8), "wd": (1e-5, 1e-1, 8)},
    "adam:schedule": {"lr": (1e-3, 1.0, 8), "wd": (1e-4, 1.0, 8)},
    "adam:lr": {"lr": (1e-3, 1.0, 8), "wd": (1e-3, 10.0, 8)},
}

#: lr axis per base. Calibrated on digits_mlp (cosine, 30 epochs, batch 64, one seed, a 6 x 6 scan
#: over 6 decades of lr at the base's reference convention and at ``schedule``:
#: scripts/calibrate_conventions.py, results/conventions/calibration.json). Best cells (lr, wd):
#: lion:lr (1e-3, 4.0), lion:schedule (1e-3, 2e-3); adafactor:lr (3, 6e-3), adafactor:schedule
#: (3, 2e-3) (Adafactor's step is min(lr*eta_t, 1/sqrt(t)) x RMS(theta), so lr > 1 still acts
#: through the schedule and the decay); radam:l2 flat from 1e-2 to 1, radam:schedule (0.1, 2e-3);
#: nadam:l2 (1e-2, 2e-3), nadam:schedule (0.1, 2e-6..4e-2, flat); muon:lr (0.38, 0.16), good from
#: lr 6e-3 to 0.4; muon:schedule (0.05, 0.04) and (3, 1.0). The SGD
#: family's constant and corrected conventions were scanned on 8 x 8 grids: best (0.036, 1e-3)
#: and (0.16, 0.1), inside their defaults. One seed: cells within ~0.01 of each other are ties, and where wd has no effect below
#: ~1e-3 (radam:l2, nadam:schedule) the single best cell of the flat band lies anywhere in it.
BASE_LR: dict[str, AxisTuple] = {
    "sgd": (1e-3, 1.0, 8),
    "adam": (1e-4, 1e-1, 8),
    "radam": (1e-3, 1.0, 8),
    "nadam": (1e-3, 1.0, 8),
    "lion": (1e-4, 1e-1, 8),
    "adafactor": (1e-2, 10.0, 8),
    "muon": (1e-3, 1.0, 8),
}

#: wd axis per (base, convention) where the convention's default (CONVENTION_WD) does not hold the
#: calibrated optimum: Lion's lr-scaled decays need a wd ~20x Adam's (its best lr is ~20x smaller,
#: the best per-step decay lr*wd is about the same); Adafactor's lr-scaled ones a smaller one
#: (its lr is a relative step of ~1).
BASE_CONVENTION_WD: dict[tuple[str, str], AxisTuple] = {
    ("lion", "lr"): (1e-2, 100.0, 8),
    ("lion", "corrected"): (1e-2, 100.0, 8),
    ("adafactor", "lr"): (1e-4, 1.0, 8),
    ("adafactor", "corrected"): (1e-4, 1.0, 8),
    ("muon", "schedule"): (1e-4, 1.0, 8),
    ("muon", "constant"): (1e-4, 1.0, 8),
}

#: wd axis per convention where no (base, convention) entry exists.
CONVENTION_WD: dict[str, AxisTuple] = {
    "l2": (1e-5, 1e-1, 8),
    "lr": (1e-3, 10.0, 8),
    "schedule": (1e-5, 1e-1, 8),
    "constant": (1e-5, 1e-1, 8),
    "corrected": (1e-3, 10.0, 8),
}


def default_grid(name: str) -> dict[str, AxisTuple]:
    """The lr and wd axes a spec gets for ``name`` when it leaves them out."""
    r = parse(name)
    if r.canonical in _LEGACY_GRIDS:
        return dict(_LEGACY_GRIDS[r.canonical])
    if r.base in PLUGIN_BASES:
        plugin = PLUGIN_BASES[r.base]
        return {"lr": plugin.lr, "wd": plugin.wd.get(r.convention, CONVENTION_WD[r.convention])}
    wd = BASE_CONVENTION_WD.get((r.base, r.convention), CONVENTION_WD[r.convention])
    return {"lr": BASE_LR[r.base], "wd": wd}


__all__ = [
    "ALIASES", "BASES", "CONVENTIONS", "REFERENCE_CONVENTION", "LEGACY_NAMES", "FAMILY", "REFERENCE",
    "BASE_RULE", "CONVENTION_RULE", "CONVENTION_TEXT", "LR_POWER", "SCHEDULE_FACTOR", "UnknownOptimizer", "UpdateRule",
    "parse", "is_known", "rule_text", "all_names", "default_grid", "valid_names_message",
    "PLUGIN_BASES", "PluginBase", "register_base", "all_bases", "base_family", "base_title", "base_rule",
    "base_reference", "base_reference_convention", "base_conventions", "base_lr",
]
