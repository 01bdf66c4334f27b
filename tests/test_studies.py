"""The shipped studies (studies/*.yaml) are valid specs, and RESULTS.md cites the runs of exactly them.

Each file is read as ``decouple submit`` reads it (``service.client.load_spec``) and validated by
the API's own model (``service.schemas.StudySpec``) under the default trial cap. Every study but
the GPU one has a committed report (``results/NAME/report.json``) whose grid axes, seeds, epochs
and schedule are those of its file today, so a spec edited after its run (or a catalogue default
that moved under a study relying on it) shows up here rather than as a silent mismatch between
RESULTS.md and what ``scripts/run-studies NAME`` would now run.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from service.client import load_spec
from service.config import Settings
from service.schemas import StudySpec, axis_values

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "studies").glob("*.yaml"))
NOT_RUN = {"fig2-cifar10"}


def _spec(path: Path) -> StudySpec:
    cap = Settings.model_fields["max_trials"].default
    return StudySpec.model_validate(load_spec(path), context={"max_trials": cap})


def test_the_shipped_studies_are_the_issues():
    stems = {p.stem for p in FILES}
    for prefix in ("fig2-digits-mlp", "fig2-normalized-", "fig1-schedules-constant", "fig1-schedules-step",
                   "fig1-schedules-cosine", "fig1-schedules-cosine-restarts", "normalized-wd-",
                   "decay-scope-all", "decay-scope-weights", "decay-scope-invariant", "fig2-cifar10"):
        assert any(s == prefix or s.startswith(prefix) for s in stems), prefix


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_study_file_is_a_valid_spec_named_after_its_file(path):
    spec = _spec(path)
    assert spec.name == path.stem
    assert len(spec.seeds) >= 2  # intervals need two seeds or more
    if path.stem in NOT_RUN:
        assert spec.task == "cifar10_resnet" and spec.epochs == 100 and spec.batch_size == 128
        assert all(o.is_auto for o in spec.optimizers)
    else:
        assert not any(o.is_auto for o in spec.optimizers)  # windows fixed before the run


def test_run_studies_all_is_every_study_but_the_gpu_one():
    run_studies = runpy.run_path(str(ROOT / "scripts" / "run-studies"), run_name="not_main")
    assert [p.stem for p in run_studies["study_files"](["all"])] == [p.stem for p in FILES if p.stem not in NOT_RUN]
    assert [p.stem for p in run_studies["study_files"](["fig1-schedules"])] == [
        "fig1-schedules-constant", "fig1-schedules-cosine-restarts", "fig1-schedules-cosine", "fig1-schedules-step"]
    with pytest.raises(SystemExit, match="no study 'fig3'"):
        run_studies["study_files"](["fig3"])


@pytest.mark.parametrize("path", [p for p in FILES if p.stem not in NOT_RUN],
                         ids=[p.stem for p in FILES if p.stem not in NOT_RUN])
def test_results_are_the_runs_of_these_files(path):
    spec = _spec(path)
    report = json.loads((ROOT / "results" / path.stem / "report.json").read_text())
    assert report["name"] == spec.name and report["status"] == "done" and report["partial"] is False
    assert report["task"] == spec.task and report["epochs"] == spec.epochs and report["seeds"] == spec.seeds
    assert report["schedule"]["name"] == spec.schedule.name
    assert report["wd_normalized"] == spec.wd_normalized
    assert [e["name"] for e in report["optimizers"]] == [o.name for o in spec.optimizers]
    for e, o in zip(report["optimizers"], spec.optimizers):
        assert np.allclose(e["grid"]["lr"], axis_values(o.lr), rtol=1e-12)
        assert np.allclose(e["grid"]["wd"], axis_values(o.wd), rtol=1e-12)
        assert (ROOT / "results" / path.stem / f"{o.name}.png").stat().st_size < 60_000
    timings = json.loads((ROOT / "results" / "timings.json").read_text())
    assert timings[path.stem]["status"] == "done" and timings[path.stem]["wall_seconds"] > 0
    assert f"### {path.stem}\n" in (ROOT / "RESULTS.md").read_text()


def test_mnist5k_resnet_optima_lie_inside_the_default_grids():
    """mnist5k_resnet runs on the catalogue's default axes (calibrated on digits_mlp) as every
    built-in task does: the converged paper-regime study's best cell of every optimizer lies
    strictly inside its default lr and wd axes, a grid step or more from each edge (measured: every
    one 0.8 decades or more from the nearest edge, e.g. adamw_torch's wd 1.58 against 10), so a study that leaves the axes
    out finds the optimum inside its grid."""
    from service.domain.catalog import default_grid

    report = json.loads((ROOT / "results" / "paper-regime-resnet" / "report.json").read_text())
    assert report["task"] == "mnist5k_resnet" and report["epochs"] >= 8
    for e in report["optimizers"]:
        axes = default_grid(e["name"])
        for key in ("lr", "wd"):
            ax, best = axes[key], e["best"][key]
            step = (np.log10(ax.max) - np.log10(ax.min)) / (ax.num - 1)
            assert np.log10(ax.min) + step <= np.log10(best) + 1e-9, (e["name"], key, best, ax)
            assert np.log10(best) <= np.log10(ax.max) - step + 1e-9, (e["name"], key, best, ax)


@pytest.mark.parametrize("path", [p for p in FILES if p.stem not in NOT_RUN],
                         ids=[p.stem for p in FILES if p.stem not in NOT_RUN])
def test_results_md_holds_each_studys_section_as_its_report_prints_it(path):
    """RESULTS.md's "### NAME" section is ``scripts/results-section NAME`` on ``results/``: run,
    ranking, measures, verdicts, curves and warnings as the committed report has them (a re-run
    without ``--update`` fails here)."""
    script = runpy.run_path(str(ROOT / "scripts" / "results-section"), run_name="not_main")
    section = script["section"](path.stem, ROOT / "results")
    assert section.startswith(f"### {path.stem}\n") and "Verdicts (`service.analysis.decide`" in section
    assert section in (ROOT / "RESULTS.md").read_text()


def test_results_section_formats_what_decide_could_not_give():
    script = runpy.run_path(str(ROOT / "scripts" / "results-section"), run_name="not_main")
    regret, slope = script["regret_text"], script["slope_text"]
    assert regret(None) == "–" and regret({"max": None}) == "–"  # not_enough_data
    assert regret({"max": 0.0123, "max_in_seed_sd": 1.156, "max_in_samples": 12.3}) == "0.0123 (1.16, 12)"
    assert regret({"max": 0.5, "max_in_seed_sd": None, "max_in_samples": None}) == "0.5000 (–, –)"
    assert slope({"ridge_slope": None}) == "–"
    assert slope({"ridge_slope": -1.16, "ridge_slope_ci": [None, None]}) == "-1.16 [±∞, ±∞]"
    assert slope({"ridge_slope": 0.5, "ridge_slope_ci": [0.106, 1.19]}) == "+0.50 [+0.11, +1.19]"
