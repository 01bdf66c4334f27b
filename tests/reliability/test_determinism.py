"""Results depend on (task, optimizer, lr, wd, seed, budget) alone, not on how trials are packed.

The kill storm (``test_kill_storm.py``) compares the reports of a disturbed run with those of an
undisturbed one. That is only meaningful if a trial's result does not depend on which other
trials share its block: after a worker dies, its successor packs the trials that are left into
new, different blocks. These tests train the same configs packed whole, split, reversed and one
by one, with the real packed trainer on the CPU, and require bit-identical curves; the tasks
include BatchNorm, whose batch statistics must stay per config and never mix across the stack.
"""

from __future__ import annotations

import pytest

from workers.packed import TrialConfig, train_block

#: Small slices of the data sets keep each run well under a second; the arithmetic is the same.
DATA = {"max_train": 384, "max_val": 128}

CONFIGS = [
    TrialConfig(lr=1e-3, wd=1e-4, seed=0, key=0),
    TrialConfig(lr=1e-2, wd=1e-2, seed=1, key=1),
    TrialConfig(lr=3e-2, wd=1e-3, seed=2, key=2),
    TrialConfig(lr=1e-2, wd=1e-2, seed=0, key=3),  # same cell as key 1, another seed
]


def curves(results) -> dict:
    return {r.key: [(m.train_loss, m.val_loss, m.val_error, m.diverged) for m in r.curve] for r in results}


@pytest.mark.parametrize("task, optimizer", [
    ("digits_mlp", "adamw"), ("digits_mlp_bn", "adamw"), ("mnist5k_cnn", "adamw"), ("mnist5k_resnet", "adamw"),
])
def test_packing_does_not_change_results(task, optimizer):
    """The MLP engine (batched matmuls) and the wide one (grouped convolutions, BatchNorm over
    the stacked channels; chunks padded to a fixed group count); Adam, because
    with BatchNorm it turns rounding noise into whole steps (``workers.packed``'s docstring), so
    any dependence on the block's other rows would show."""
    kw = {"epochs": 2, "batch_size": 64, "schedule": {"name": "cosine"}, **DATA}
    whole = curves(train_block(task, optimizer, CONFIGS, **kw))
    split = curves(train_block(task, optimizer, CONFIGS[:1], **kw) + train_block(task, optimizer, CONFIGS[1:], **kw))
    backwards = curves(train_block(task, optimizer, CONFIGS[::-1], **kw))
    alone = curves([train_block(task, optimizer, [c], **kw)[0] for c in CONFIGS])
    assert whole == split == backwards == alone  # exact float equality, not approx
    assert whole[1] != whole[3]  # the seed matters (so the equality above is not vacuous)


def test_a_block_whose_every_config_diverges_runs_to_the_end():
    """Every config dead after the first epoch: later epochs report the frozen metrics (the
    trainer once failed here, drawing a data order for zero live configs)."""
    configs = [TrialConfig(lr=30.0, wd=1e-3, seed=0, key="a"), TrialConfig(lr=100.0, wd=1e-3, seed=1, key="b")]
    results = train_block("digits_mlp", "sgd", configs, epochs=3, schedule={"name": "cosine"})
    assert [(r.key, r.diverged, r.diverged_epoch, len(r.curve)) for r in results] == [("a", True, 0, 3), ("b", True, 0, 3)]
    for r in results:
        assert all(m.diverged for m in r.curve)
        assert r.curve[1].val_error == r.curve[2].val_error == r.curve[0].val_error  # frozen at death
