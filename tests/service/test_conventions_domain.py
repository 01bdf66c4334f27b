"""The vocabulary of update rules (service.domain.conventions): names, aliases, rule texts, grids."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.domain import conventions as c


def test_aliases_and_bare_bases_mean_what_the_contract_says():
    expect = {"sgd": "sgd:l2", "sgdw": "sgd:schedule", "adam": "adam:l2", "adamw": "adam:schedule",
              "adamw_torch": "adam:lr", "radam": "radam:l2", "nadam": "nadam:l2", "lion": "lion:lr",
              "adafactor": "adafactor:lr", "muon": "muon:lr"}
    for name, canonical in expect.items():
        assert c.parse(name).canonical == canonical
        assert c.parse(name).name == name


def test_every_base_and_convention_combine():
    names = c.all_names()
    built_in = [n for n in names if c.parse(n).base in c.BASES]  # then installed plugins' (the example's)
    assert len(built_in) == len(set(built_in)) == 5 + 5 + 7 * 5 and names[:45] == tuple(built_in)
    for base in c.BASES:
        for conv in c.CONVENTIONS:
            r = c.parse(f"{base}:{conv}")
            assert (r.base, r.convention) == (base, conv)
            assert r.rule.startswith(c.CONVENTION_RULE[conv]) and c.BASE_RULE[base] in r.rule
            grid = c.default_grid(r.name)
            assert set(grid) == {"lr", "wd"}
            for lo, hi, num in grid.values():
                assert 0 < lo < hi and num >= 2


@pytest.mark.parametrize("bad, part", [
    ("adagrad", "unknown base 'adagrad'"), ("adam:l1", "unknown convention 'l1'"),
    ("ADAM", "unknown base 'ADAM'"), ("adam:", "unknown convention ''"), (":lr", "unknown base ''"),
    ("sgdw:lr", "unknown base 'sgdw'"), (3, "unknown optimizer 3"),
])
def test_unknown_names_list_the_valid_ones(bad, part):
    with pytest.raises(c.UnknownOptimizer) as exc:
        c.parse(bad)
    msg = str(exc.value)
    assert part in msg
    assert all(b in msg for b in c.BASES) and all(v in msg for v in c.CONVENTIONS)
    assert all(a in msg for a in c.ALIASES)
    assert not c.is_known(bad)


def test_legacy_names_keep_their_grids_and_titles():
    assert c.default_grid("adamw") == {"lr": (1e-3, 1.0, 8), "wd": (1e-4, 1.0, 8)}
    assert c.default_grid("adam:schedule") == c.default_grid("adamw")
    assert c.parse("adamw").title == "AdamW (paper, Algorithm 2)"
    assert c.parse("lion:corrected").title == "Lion, corrected decay"


def test_the_domain_imports_no_torch():
    code = "import sys, service.domain.conventions; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
