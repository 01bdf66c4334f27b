"""The domain core: the facts and pure functions every other part of Decouple Lab builds on.

It imports nothing but the standard library, numpy and pydantic (no torch, no SQLAlchemy, no
Ray, nothing in ``workers``), so the API, the store, the report and the workers can all depend
on it and it on none of them (checked by import-linter, see ``pyproject.toml``).

- :mod:`service.domain.conventions`: bases x decay conventions: names, aliases, parsing, rule texts, default grids.
- :mod:`service.domain.rules`: the variant record each optimizer name resolves to; DECAY_ON, schedule and metric names.
- :mod:`service.domain.seeds`: seeds until decided (the next seed round from a verdict).
- :mod:`service.domain.catalog`: the task catalogue's metadata and the default grids.
- :mod:`service.domain.plugins`: the one registry of tasks and update rules, built-ins
  (:mod:`service.domain.builtins`) and installed plugins' entry points alike (``docs/plugins.md``).
- :mod:`service.domain.grid`: log-spaced grid axes, their extension, the normalized-decay scale.
- :mod:`service.domain.placement`: pilot grids, smoothing, window placement, edge repair.
- :mod:`service.domain.numeric`: the shared parabola vertex and the JSON-safe value conversion.

The separability measures (:mod:`service.analysis`) and the study spec (:mod:`service.schemas`)
keep their public paths and belong to the same layer.
"""
