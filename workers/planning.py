"""Planning of a study's Ray experiment: typed trial records and blocks, cut to balance the slots.

Plain data and arithmetic (no database, no Ray, no torch): the runner and the phased pilot hand
frozen records here, never ORM rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import NamedTuple


class BlockTrial(NamedTuple):
    """One trial of a block: what a Ray block config carries for it (as a list)."""

    id: int
    lr: float
    wd: float
    seed: int


class TrialRow(NamedTuple):
    """A pending trial as the planning code sees it (not an ORM row)."""

    id: int
    optimizer: str
    lr: float
    wd: float
    seed: int

    def block_trial(self) -> BlockTrial:
        return BlockTrial(self.id, self.lr, self.wd, self.seed)


@dataclass(frozen=True)
class Block:
    """Trials of one optimizer trained together as one packed model."""

    optimizer: str
    trials: tuple[BlockTrial, ...]


@dataclass(frozen=True)
class PilotCell:
    """One pilot trial as placement reads it: its grid cell and its metric (None = failed or
    diverged, the worst outcome)."""

    lr_index: int
    wd_index: int
    lr: float
    wd: float
    value: float | None


#: A block's fixed cost (a Tune trial on a Ray process, building its K models, its database round
#: trips), in units of one config's training: it keeps small studies from being cut finer than
#: balancing the slots is worth.
BLOCK_OVERHEAD = 4


def even_split(n: int, pieces: int) -> list[int]:
    """``pieces`` sizes summing to ``n`` that differ by at most one (largest first); none for 0."""
    if pieces <= 0:
        return []
    q, r = divmod(n, pieces)
    return [q + 1] * r + [q] * (pieces - r)


def _makespan(sizes: list[int], slots: int) -> int:
    """Finishing time of blocks of these sizes on ``slots`` slots, largest first to the least loaded
    (Tune starts trials in order as slots free up), each costing its size + BLOCK_OVERHEAD."""
    loads = [0] * slots
    for size in sorted(sizes, reverse=True):
        i = loads.index(min(loads))
        loads[i] += size + BLOCK_OVERHEAD
    return max(loads)


def make_blocks(trials: Sequence[tuple[int, str, float, float, int]], max_block: int, slots: int) -> list[Block]:
    """Cut (id, optimizer, lr, wd, seed) rows into per-optimizer blocks of at most ``max_block``.

    Blocks never mix optimizers, so the slots can only be balanced by cutting optimizers into
    pieces: five optimizers of 128 trials on 2 slots as five blocks take three rounds, the last
    with one slot idle (makespan 3 x 128), as ten blocks of 64 five even rounds (5 x 64). For
    r = 1, 2, ... rounds the target size is min(max_block, ceil(total / (slots r))), each optimizer
    is cut into ceil(n / target) near-equal blocks, and the cut with the smallest makespan
    (:func:`_makespan`, which charges each block :data:`BLOCK_OVERHEAD`) wins, the fewest blocks on
    a tie. Sixteen rounds suffice: by then every slot has many blocks and the last round's idle
    share is small.
    """
    rows_in = sorted((TrialRow(*r) for r in trials), key=lambda r: (r.optimizer, r.id))
    by_opt = {opt: [r.block_trial() for r in rows] for opt, rows in groupby(rows_in, key=lambda r: r.optimizer)}
    if not by_opt:
        return []
    slots = max(1, slots)
    total = sum(len(v) for v in by_opt.values())
    best: tuple[tuple[int, int], dict[str, list[int]]] | None = None
    for rounds in range(1, 17):
        target = max(1, min(max_block, math.ceil(total / (slots * rounds))))
        cut = {opt: even_split(len(rows), math.ceil(len(rows) / target)) for opt, rows in by_opt.items()}
        sizes = [n for split in cut.values() for n in split]
        key = (_makespan(sizes, slots), len(sizes))
        if best is None or key < best[0]:
            best = (key, cut)
        if target == 1:
            break
    assert best is not None  # the loop runs at least once
    blocks: list[Block] = []
    for opt, rows in by_opt.items():
        i = 0
        for n in best[1][opt]:
            blocks.append(Block(opt, tuple(rows[i : i + n])))
            i += n
    # Largest first, as the makespan assumed (Tune starts them in this order).
    return sorted(blocks, key=lambda b: -len(b.trials))
