"""The update-rule vocabulary as the rest of the service reads it: variants, the paper's five names.

Every optimizer is a base direction and a decay convention; ``service.domain.conventions`` defines
the bases, conventions, aliases and rule texts once (the exact formulas are in
``docs/update-rules.md``), and this module presents them as :class:`Variant` records. The five
names of the paper's comparison (``sgd``, ``sgdw``, ``adam``, ``adamw``, ``adamw_torch``) are
aliases among the others; :data:`VARIANTS`, :data:`FAMILY` and :data:`DECAY` list those five.
``workers.optim`` implements every rule in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from service.domain import conventions, plugins

# Installed plugins' bases become valid names once the registry has run (once per process).
plugins.registry()


@dataclass(frozen=True)
class Variant:
    """One optimizer: its base direction and where its weight decay sits.

    ``base`` is one of ``conventions.BASES``, ``decay`` one of ``conventions.CONVENTIONS``.
    """

    name: str
    base: str
    decay: str
    title: str
    decay_convention: str
    rule: str


@cache
def _variant(name: str) -> Variant:
    r = conventions.parse(name)
    return Variant(r.name, r.base, r.convention, r.title, r.decay_convention, r.rule)


def get_variant(name: str) -> Variant:
    """The variant ``name`` stands for (``BASE``, ``BASE:CONVENTION`` or an alias); ValueError
    naming the valid bases, conventions and aliases otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"Unknown optimizer: {name!r} ({conventions.valid_names_message()})")
    try:
        return _variant(name)
    except conventions.UnknownOptimizer as e:
        raise ValueError(f"Unknown optimizer: {name!r} ({conventions.valid_names_message()})") from e


#: The paper's five names, in the order the catalogue and the reports list them first (every name
#: a spec may use: ``conventions.all_names()``).
OPTIMIZER_NAMES: tuple[str, ...] = conventions.LEGACY_NAMES
VARIANTS: dict[str, Variant] = {name: get_variant(name) for name in OPTIMIZER_NAMES}
#: Which parameters receive weight decay (see ``workers.optim.decayed_parameter_names``).
DECAY_ON: tuple[str, ...] = ("all", "weights", "invariant")
#: The learning-rate schedules (each also scales the decoupled ``schedule`` decay).
SCHEDULE_NAMES: tuple[str, ...] = ("constant", "step", "cosine", "cosine_restarts")
#: The metrics a study may rank by (lower is better).
METRIC_NAMES: tuple[str, ...] = ("val_error", "val_loss")
#: The five names -> family (their base direction); any name: ``conventions.parse(name).family``.
FAMILY: dict[str, str] = {name: v.base for name, v in VARIANTS.items()}
#: The five names -> where the decay sits; any name: ``conventions.parse(name).convention``.
DECAY: dict[str, str] = {name: v.decay for name, v in VARIANTS.items()}
