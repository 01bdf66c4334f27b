"""The update-rule vocabulary: the five optimizer variants, each written down once.

Every variant is a base direction (SGD with momentum, or Adam) and a place for the weight
decay (``l2``: added to the gradient; ``schedule``: decoupled, scaled by the schedule only;
``lr``: decoupled, multiplied by the learning rate). The exact formulas are in
``docs/update-rules.md``; ``workers.optim`` implements them in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Base = Literal["sgd", "adam"]
Decay = Literal["l2", "schedule", "lr"]


@dataclass(frozen=True)
class Variant:
    """One optimizer: its base direction and where its weight decay sits."""

    name: str
    base: Base
    decay: Decay
    title: str
    decay_convention: str
    rule: str


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("sgd", "sgd", "l2", "SGD with momentum + L2",
                "L2: decay added to the gradient, so it goes through momentum",
                "g <- g + wd*theta; b <- momentum*b + g; theta <- theta - eta_t*lr*b"),
        Variant("sgdw", "sgd", "schedule", "SGDW (paper, Algorithm 1)",
                "decoupled; scaled by the schedule, not by lr",
                "b <- momentum*b + g; theta <- theta - eta_t*lr*b - eta_t*wd*theta"),
        Variant("adam", "adam", "l2", "Adam + L2",
                "L2: decay added to the gradient, so it goes through Adam's preconditioner",
                "g <- g + wd*theta, then Adam"),
        Variant("adamw", "adam", "schedule", "AdamW (paper, Algorithm 2)",
                "decoupled; scaled by the schedule, not by lr",
                "theta <- theta - eta_t*(lr*mhat/(sqrt(vhat)+eps) + wd*theta)"),
        Variant("adamw_torch", "adam", "lr", "AdamW as in torch.optim.AdamW",
                "decoupled from the preconditioner but multiplied by lr (PyTorch, optax, Keras)",
                "theta <- theta*(1 - lr*eta_t*wd), then Adam"),
    )
}

#: The optimizer names, in the order the catalogue and the reports list them.
OPTIMIZER_NAMES: tuple[str, ...] = tuple(VARIANTS)
#: Which parameters receive weight decay (see ``workers.optim.decayed_parameter_names``).
DECAY_ON: tuple[str, ...] = ("all", "weights", "invariant")
#: The learning-rate schedules (each also scales the decoupled ``schedule`` decay).
SCHEDULE_NAMES: tuple[str, ...] = ("constant", "step", "cosine", "cosine_restarts")
#: The metrics a study may rank by (lower is better).
METRIC_NAMES: tuple[str, ...] = ("val_error", "val_loss")
#: Optimizer -> family (its base direction).
FAMILY: dict[str, str] = {name: v.base for name, v in VARIANTS.items()}
#: Optimizer -> where its decay sits.
DECAY: dict[str, str] = {name: v.decay for name, v in VARIANTS.items()}


def get_variant(name: str) -> Variant:
    """The variant called ``name``; ValueError naming the allowed ones otherwise."""
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown optimizer: {name!r} (expected one of {', '.join(OPTIMIZER_NAMES)})"
        ) from None
