"""`decouple demo --quick` as a user runs it: a fresh directory, nothing but environment variables.

One real run (SQLite file, local Ray, 80 digits trials of 8 epochs): it must exit 0, print the
separability table, write the report page, keep Ray's files in the data directory, write
nothing to $HOME or the temp directory, and leave a study queued before it alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from service.db import dispose_engines, make_engine, session_scope, upgrade_to_head
from service.domain.catalog import default_grid
from service.models import CurvePoint, Study, Trial
from tests.conftest import make_study
from workers.demo import demo_spec
from workers.optim import OPTIMIZER_NAMES

DECOUPLE = str(Path(sys.executable).with_name("decouple"))


def test_demo_spec_quick_is_the_small_grid_of_all_five_optimizers():
    spec = demo_spec(quick=True)
    assert (spec["task"], spec["epochs"], spec["seeds"], spec["schedule"]) == ("digits_mlp", 8, [0], {"name": "cosine"})
    assert [o["name"] for o in spec["optimizers"]] == list(OPTIMIZER_NAMES)
    assert all(o["lr"]["num"] == 4 and o["wd"]["num"] == 4 for o in spec["optimizers"])
    full = demo_spec(quick=False)
    assert (full["epochs"], full["seeds"]) == (30, [0, 1])
    assert full["optimizers"] == [{"name": n} for n in OPTIMIZER_NAMES]  # default 8 x 8 grids


def test_demo_spec_takes_any_optimizer_names():
    spec = demo_spec(quick=True, optimizers=["lion", "adam:corrected", "muon", "lion"])
    assert [o["name"] for o in spec["optimizers"]] == ["lion", "adam:corrected", "muon"]
    lion = spec["optimizers"][0]
    assert lion["lr"] == {**default_grid("lion")["lr"].as_dict(), "num": 4}
    assert "lion, adam:corrected, muon" in spec["name"]
    full = demo_spec(optimizers=["radam:schedule"])
    assert full["optimizers"] == [{"name": "radam:schedule"}]


def test_demo_rejects_an_unknown_optimizer_before_doing_anything(tmp_path):
    env = {**os.environ, "DECOUPLE_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}",
           "DECOUPLE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([DECOUPLE, "demo", "--quick", "--optimizers", "lion,adam:l3"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown convention 'l3'" in proc.stderr and "corrected" in proc.stderr
    assert not (tmp_path / "d.db").exists()


def test_demo_quick_end_to_end_writes_only_its_own_directories(tmp_path):
    home, tmp, data, out = (tmp_path / d for d in ("home", "tmp", "data", "out"))
    home.mkdir()
    tmp.mkdir()
    db = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "DECOUPLE_", "MPL", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), DECOUPLE_DATABASE_URL=f"sqlite:///{db}",
               DECOUPLE_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    # A study a teammate queued earlier in the same database: the demo runs its own, not this one.
    url = f"sqlite:///{db}"
    upgrade_to_head(url)
    engine = make_engine(url)
    waiting = make_study(engine, name="queued before the demo").id
    engine.dispose()
    proc = subprocess.run([DECOUPLE, "demo", "--quick", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    lines = proc.stdout.splitlines()
    m = re.fullmatch(r"queued study ([0-9a-f]{32}): 80 trials \(sqlite:///.*demo\.db\)", lines[0])
    assert m, lines[0]
    study_id = m.group(1)
    # The table: a header, a rule, then one ranked row per optimizer.
    rule = next(i for i, line in enumerate(lines) if line.startswith("----  "))
    assert lines[rule - 1].split()[:3] == ["rank", "optimizer", "best"]
    rows = [line.split() for line in lines[rule + 1 : rule + 6]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert sorted(r[1] for r in rows) == sorted(OPTIMIZER_NAMES)
    assert all(0.0 <= float(r[2]) < 0.2 for r in rows), rows  # digits is easy: best error < 20%
    page = out / "report.html"
    assert re.fullmatch(rf"80 trials in \d+ s; report: {re.escape(str(page.resolve()))}", lines[-1])

    html = page.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert study_id in html and all(name in html for name in OPTIMIZER_NAMES)

    # Nothing in $HOME (Ray's auth token, matplotlib's caches) nor in the temp directory.
    assert list(home.rglob("*")) == [] and list(tmp.rglob("*")) == []
    # Ray's session and Tune's results are in the data directory.
    assert sorted(p.name for p in (data / "ray").iterdir()) == ["auth_token", "results", "tmp"]
    assert len(list((data / "ray" / "tmp").glob("session_2*"))) == 1
    assert (data / "ray" / "results" / f"study-{study_id}").is_dir()

    engine = make_engine(url)
    try:
        with session_scope(engine, read_only=True) as s:
            assert s.get(Study, study_id).status == "done"
            assert s.get(Study, waiting).status == "queued"
            statuses = s.execute(select(Trial.status, func.count()).where(Trial.study_id == study_id)
                                 .group_by(Trial.status)).all()
            assert [tuple(r) for r in statuses] == [("done", 80)]
            assert set(s.scalars(select(Trial.status).where(Trial.study_id == waiting))) == {"queued"}
            per_trial = s.execute(
                select(CurvePoint.trial_id, func.count(), func.min(CurvePoint.epoch), func.max(CurvePoint.epoch))
                .group_by(CurvePoint.trial_id)
            ).all()
            assert len(per_trial) == 80 and {tuple(r[1:]) for r in per_trial} == {(8, 0, 7)}
    finally:
        engine.dispose()
        dispose_engines(url)
