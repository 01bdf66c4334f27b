"""Two or more finished studies side by side: each measure per study and its difference.

The question a team asks after two studies ("is AdamW more separable on the normalized network
than on the plain one?", "did the schedule change the basin?") is a question about a
*difference*, and its uncertainty is not the overlap of two intervals. So the difference of each
measure gets its own bootstrap interval.

Method (``measure_differences``). Study k and the first study are independent experiments, each
with its own seeds. For each optimizer both studies ran, the per-seed grids (S_k x n x m, from the
trials, exactly as the report builds them) are resampled over seeds *independently*, B = 400
times with a fixed generator seed so the answer is reproducible: draw S_k of study k's seeds with
replacement and S_1 of the first's, re-average each grid (a cell is diverged when any drawn seed
diverged there, as in the report), recompute every measure of ``service.analysis`` on both, and
take d*_b = theta*_k,b - theta*_1,b. With d = theta_k - theta_1 (the reports' own point
estimates), the interval is the basic bootstrap interval

    [2 d - q_97.5(d*), 2 d - q_2.5(d*)]

(the same construction the report uses for each measure: resampled seed means are noisier than
the real ones and noise adds interaction, so the plain percentiles would be shifted; see
``service.analysis``). ``excludes_zero`` is true when the interval lies wholly above or below 0.
A measure undefined in either point estimate, or in more than half the resamples, has no
interval; neither does a study with a single seed (its resamples never move, so the interval
would show only the other study's noise) -- then ``excludes_zero`` is ``null``.

As a conservative cross-check that needs only the two reports, ``intervals_disjoint`` says
whether the two studies' own 95 % intervals fail to overlap. Two disjoint intervals imply a
difference; overlapping ones do not rule one out (it is a weaker test than the bootstrap of
the difference).

Studies are compared on one metric only (a val_error and a val_loss study measure in different
units); an optimizer whose grids differ between studies is compared all the same (the measures
are unitless and on log axes) with a warning, because how much of a basin a window shows
changes the measures.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.analysis import CI_MEASURES, _raw_measures, _seed_mean
from service.domain.catalog import DEFAULT_GRIDS, chance_level, default_wd
from service.errors import Conflict, InvalidInput

#: Bootstrap resamples per difference; the generator seed that makes them reproducible.
N_BOOT = 400
RNG_SEED = 0
#: At most this many studies in one comparison (each adds a column and B resamples).
MAX_STUDIES = 8
#: The measures compared, in the order the page lists them (``separability`` is 1 - share, so
#: its difference is minus the share's and is left out).
MEASURES = ("best_value", "interaction_share", "interaction_share_rank", "optimal_wd_slope",
            "basin_tilt_deg", "coordinate_regret")
METHOD = ("Difference = study minus the first study. 95% basic bootstrap interval of the difference: "
          f"each study's seeds resampled independently with replacement ({N_BOOT} resamples, generator "
          f"seed {RNG_SEED}), every measure recomputed on both re-averaged grids; interval "
          "[2d - q97.5, 2d - q2.5] of the resampled differences. 'excludes_zero' is null when either "
          "study has one seed. 'intervals_disjoint' is the conservative check from the two reports' "
          "own intervals (no overlap).")
assert set(MEASURES) <= set(CI_MEASURES)


#: What ``?ids=`` looks like, for the OpenAPI schema (the API also accepts blanks around ids).
ID_LIST_PATTERN = rf"^[0-9a-f]{{32}}(,[0-9a-f]{{32}}){{1,{MAX_STUDIES - 1}}}$"


def parse_ids(raw: str | Sequence[str]) -> list[str]:
    """Study ids from ``"ID1,ID2"`` (or a list): at least two, at most MAX_STUDIES."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    ids = [p.strip() for p in parts if p.strip()]
    if len(ids) < 2:
        raise InvalidInput("ids", f"give at least two study ids, comma-separated (got {len(ids)})")
    if len(ids) > MAX_STUDIES:
        raise InvalidInput("ids", f"at most {MAX_STUDIES} studies can be compared at once (got {len(ids)})")
    return ids


def check_distinct(ids: Sequence[str]) -> None:
    """A study compared with itself says nothing: each id once."""
    dupes = [i for i in dict.fromkeys(ids) if list(ids).count(i) > 1]
    if dupes:
        raise InvalidInput("ids", f"study {dupes[0]} is listed more than once")


# --------------------------------------------------------------------------- per-seed grids


@dataclass
class OptimizerGrid:
    """One optimizer's grid phase of one study, per seed (what the report averages)."""

    lrs: np.ndarray
    wds: np.ndarray
    #: S x n x m metric per seed; +inf where that seed diverged, NaN where it has not finished.
    per_seed: np.ndarray
    present: np.ndarray
    chance: float | None
    default_wd: float | None

    @property
    def seeds(self) -> int:
        return int(self.per_seed.shape[0])


def study_grids(study: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, OptimizerGrid]:
    """Per optimizer, the per-seed grids of a study (``store.study_dict`` / ``trial_dict`` shapes).

    Cells, seeds and divergence are read exactly as ``service.report.build_report`` reads them:
    grid-phase trials, axes from the stored spec (else the values the trials ran at), a diverged
    or non-finite metric is +inf, a trial not done is absent.
    """
    from service.report import _axis, _finite

    spec = study.get("spec") or {}
    metric = spec.get("metric", "val_error")
    try:
        chance = chance_level(spec.get("task"), metric)
    except KeyError:
        chance = None
    out: dict[str, OptimizerGrid] = {}
    for opt in spec.get("optimizers", []):
        name = opt["name"]
        mine = [t for t in trials if t.get("optimizer") == name and (t.get("phase") or "grid") == "grid"]
        lrs, wds = _axis(opt.get("lr"), mine, "lr"), _axis(opt.get("wd"), mine, "wd")
        if not (len(lrs) and len(wds)):
            continue
        seeds = list(spec.get("seeds") or [])
        seeds += [s for s in dict.fromkeys(t.get("seed") for t in mine) if s not in seeds]
        seeds = seeds or [0]
        vals = np.full((len(seeds), len(lrs), len(wds)), np.nan)
        present = np.zeros(vals.shape, bool)
        for t in mine:
            i, j = t.get("lr_index"), t.get("wd_index")
            if t.get("status") != "done" or i is None or j is None \
                    or not (0 <= i < len(lrs) and 0 <= j < len(wds)):
                continue
            s, v = seeds.index(t.get("seed")), t.get(metric)
            present[s, i, j] = True
            vals[s, i, j] = np.inf if t.get("diverged") or not _finite(v) else float(v)
        dwd = None if spec.get("wd_normalized") or name not in DEFAULT_GRIDS else default_wd(name)
        out[name] = OptimizerGrid(lrs, wds, vals, present, chance, dwd)
    return out


def bootstrap_samples(g: OptimizerGrid, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each measure on ``n_boot`` seed resamples of ``g`` (NaN where a resample leaves it undefined)."""
    from math import log10

    x = np.array([log10(v) for v in g.lrs])
    y = np.array([log10(v) for v in g.wds])
    mean = _seed_mean(g.per_seed, g.present)
    c = g.chance
    if c is None:  # as service.analysis._chance: the worst finite value
        finite = g.per_seed[g.present & np.isfinite(g.per_seed)]
        c = float(finite.max()) if finite.size else None
    out = {k: np.full(n_boot, np.nan) for k in MEASURES}
    if c is None or np.isnan(mean).any():
        return out
    S = g.seeds
    # A resample's grid depends only on which seeds were drawn how often (the multiset), and
    # S seeds have only C(2S-1, S) multisets (3 for S = 2, 10 for S = 3): each is measured once.
    seen: dict[tuple[int, ...], dict] = {}
    for b in range(n_boot):
        idx = np.sort(rng.integers(0, S, size=S))
        key = tuple(int(i) for i in idx)
        r = seen.get(key)
        if r is None:
            grid = _seed_mean(g.per_seed[idx], g.present[idx])
            grid = np.where(np.isnan(grid), mean, grid)  # a cell no drawn seed finished keeps its mean
            r = seen[key] = _raw_measures(x, y, grid, c, g.default_wd)
            r["best_value"] = r["best"]["value"] if r["best"] else None
        for k in MEASURES:
            if r[k] is not None:
                out[k][b] = r[k]
    return out


# --------------------------------------------------------------------------- differences


def _value(entry: dict | None, key: str) -> float | None:
    if entry is None:
        return None
    if key == "best_value":
        return (entry.get("best") or {}).get("value")
    return entry.get(key)


def _ci(entry: dict | None, key: str) -> list[float] | None:
    return None if entry is None else (entry.get("ci") or {}).get(key)


def difference(point: float | None, samples: np.ndarray | None) -> dict[str, Any]:
    """The basic bootstrap interval of a difference and whether it excludes 0."""
    if point is None or samples is None:
        return {"diff": point, "ci": None, "excludes_zero": None}
    ok = samples[np.isfinite(samples)]
    if ok.size * 2 < samples.size:
        return {"diff": point, "ci": None, "excludes_zero": None}
    q_lo, q_hi = np.percentile(ok, [2.5, 97.5])
    lo, hi = min(2 * point - q_hi, point), max(2 * point - q_lo, point)
    return {"diff": point, "ci": [float(lo), float(hi)], "excludes_zero": bool(lo > 0 or hi < 0)}


def _disjoint(a: list[float] | None, b: list[float] | None) -> bool | None:
    if not a or not b:
        return None
    return bool(a[1] < b[0] or b[1] < a[0])


def _same_axes(a: OptimizerGrid, b: OptimizerGrid) -> bool:
    return a.lrs.shape == b.lrs.shape and a.wds.shape == b.wds.shape \
        and np.allclose(a.lrs, b.lrs, rtol=1e-9) and np.allclose(a.wds, b.wds, rtol=1e-9)


def measure_differences(first: OptimizerGrid, other: OptimizerGrid, first_entry: dict, other_entry: dict,
                        *, n_boot: int = N_BOOT, rng_seed: int = RNG_SEED) -> dict[str, dict[str, Any]]:
    """Per measure: ``diff`` (other - first, from the reports), its ``ci``, ``excludes_zero`` and
    ``intervals_disjoint`` (see the module docstring)."""
    rng = np.random.default_rng(rng_seed)
    both_seeded = first.seeds >= 2 and other.seeds >= 2
    s_first = bootstrap_samples(first, n_boot, rng) if both_seeded else None
    s_other = bootstrap_samples(other, n_boot, rng) if both_seeded else None
    out = {}
    for k in MEASURES:
        a, b = _value(first_entry, k), _value(other_entry, k)
        point = None if a is None or b is None else float(b) - float(a)
        samples = None if s_first is None else s_other[k] - s_first[k]
        out[k] = {**difference(point, samples),
                  "intervals_disjoint": _disjoint(_ci(first_entry, k), _ci(other_entry, k))}
    return out


def _study_meta(report: dict) -> dict[str, Any]:
    keys = ("study_id", "name", "task", "status", "metric", "seeds", "epochs", "schedule", "wd_normalized")
    return {k: report.get(k) for k in keys}


def compare(reports: Sequence[dict], grids: Sequence[dict[str, OptimizerGrid]], *,
            decay_on: Sequence[str] | None = None, n_boot: int = N_BOOT) -> dict[str, Any]:
    """The comparison of finished studies from their reports and per-seed grids (same order).

    Returns ``{"studies", "metric", "method", "optimizers": [{"name", "studies": [per study:
    {"study_id", "present", "best", "measures": {m: {"value", "ci"}}}], "differences": [per study
    after the first: {"study_id", "vs", "measures": {m: {"diff", "ci", "excludes_zero",
    "intervals_disjoint"}}}], "warnings"}], "warnings"}``.
    """
    if len(reports) < 2:
        raise InvalidInput("ids", f"give at least two study ids, comma-separated (got {len(reports)})")
    metrics = {r.get("metric") for r in reports}
    if len(metrics) > 1:
        raise InvalidInput("ids", "the studies use different metrics (" + ", ".join(sorted(map(str, metrics)))
                           + "): only studies on the same metric can be compared")
    studies = [_study_meta(r) for r in reports]
    for s, d in zip(studies, decay_on or [None] * len(studies)):
        s["decay_on"] = d
    names = list(dict.fromkeys(e["name"] for r in reports for e in r.get("optimizers", [])))
    first_id = reports[0].get("study_id")
    optimizers = []
    for name in names:
        entries = [next((e for e in r.get("optimizers", []) if e["name"] == name), None) for r in reports]
        per_study = []
        for r, e in zip(reports, entries):
            per_study.append({
                "study_id": r.get("study_id"), "present": e is not None,
                "best": None if e is None else e.get("best"),
                "measures": {k: {"value": _value(e, k), "ci": _ci(e, k)} for k in MEASURES},
            })
        warnings: list[str] = []
        diffs = []
        g0 = grids[0].get(name)
        for k in range(1, len(reports)):
            gk = grids[k].get(name)
            sid = reports[k].get("study_id")
            if entries[0] is None or g0 is None:
                if k == 1:
                    warnings.append(f"the first study, {first_id}, has no {name} grid: no differences for {name}.")
                diffs.append({"study_id": sid, "vs": first_id, "measures": None})
                continue
            if entries[k] is None or gk is None:
                warnings.append(f"study {sid} has no {name} grid: no difference for it.")
                diffs.append({"study_id": sid, "vs": first_id, "measures": None})
                continue
            if not _same_axes(g0, gk):
                warnings.append(f"{name}'s grid differs between study {first_id} and study {sid}: the "
                                "measures depend on how much of the basin a window shows, so read the "
                                "difference with care.")
            if g0.seeds < 2 or gk.seeds < 2:
                warnings.append(f"study {first_id if g0.seeds < 2 else sid} has one seed: the differences "
                                "with study " f"{sid} have no interval.")
            diffs.append({"study_id": sid, "vs": first_id,
                          "measures": measure_differences(g0, gk, entries[0], entries[k], n_boot=n_boot)})
        optimizers.append({"name": name, "studies": per_study, "differences": diffs, "warnings": warnings})
    warnings = []
    if len({s["task"] for s in studies}) > 1:
        warnings.append("The studies are on different tasks: best values compare different problems; "
                        "the shape measures (interaction shares, slope, tilt) are unitless and compare.")
    if len({bool(s["wd_normalized"]) for s in studies}) > 1:
        warnings.append("Some studies hold lambda_norm on the wd axis and others raw wd: the axes differ "
                        "by the factor sqrt(b/(B*T)).")
    return {"studies": studies, "metric": reports[0].get("metric"), "method": METHOD, "n_boot": n_boot,
            "measures": list(MEASURES), "optimizers": optimizers, "warnings": warnings}


def load_studies(engine: Any, ids: str | Sequence[str]) -> tuple[list[dict], list[dict[str, OptimizerGrid]], list[str]]:
    """Each study's report, per-seed grids and ``decay_on``: :class:`InvalidInput` for too few or
    too many ids, :class:`~service.errors.NotFound` for an unknown one, :class:`Conflict` for one
    not done (checked for every id before any report is built), :class:`InvalidInput` for an id
    listed twice.

    Reports of done studies come from their cache (computed and cached here when missing).
    """
    from service import store
    from service.db import session_scope
    from service.report import build_report

    ids = parse_ids(ids)
    with session_scope(engine, read_only=True) as session:  # every id exists and is done, first
        for sid in ids:
            study = store.get_study(session, sid)
            if study.status != "done":
                raise Conflict(f"study {sid} is {study.status}: only finished (done) studies can be compared")
    check_distinct(ids)
    reports, grids, decay_on = [], [], []
    for sid in ids:
        with session_scope(engine, read_only=True) as session:
            study = store.get_study(session, sid)
            sdict = store.study_dict(study)
            trials = [store.trial_dict(t) for t in store.list_trials(session, sid)]
            report, needs_caching = store.compute_report(session, sid, build_report)
        if needs_caching:
            with session_scope(engine) as session:
                store.cache_report(session, sid, report)
        reports.append(report)
        grids.append(study_grids(sdict, trials))
        decay_on.append((sdict["spec"] or {}).get("decay_on", "all"))
    return reports, grids, decay_on


def compare_studies(engine: Any, ids: str | Sequence[str], *, n_boot: int = N_BOOT) -> dict[str, Any]:
    """``GET /compare``: the comparison JSON of the studies ``ids`` (see :func:`compare`)."""
    reports, grids, decay_on = load_studies(engine, ids)
    return compare(reports, grids, decay_on=decay_on, n_boot=n_boot)


def compare_page(engine: Any, ids: str | Sequence[str], *, n_boot: int = N_BOOT) -> str:
    """``GET /compare.html``: the comparison page, with the studies' heat maps side by side."""
    reports, grids, decay_on = load_studies(engine, ids)
    return render_compare_html(compare(reports, grids, decay_on=decay_on, n_boot=n_boot), reports)


# --------------------------------------------------------------------------- terminal


def _plain(v: float | None, fmt: str) -> str:
    if v is None:
        return "-"
    text = format(v, fmt)
    return format(0.0, fmt) if float(text) == 0 else text


def format_compare(result: dict[str, Any]) -> str:
    """``decouple compare``: per optimizer, each measure per study and each difference from the
    first study; ``*`` marks a difference whose 95 % interval excludes zero."""
    studies = result["studies"]
    lines = ["studies: " + "; ".join(f"#{n + 1} {s.get('name') or ''} ({s['study_id']})"
                                     for n, s in enumerate(studies))]
    for opt in result["optimizers"]:
        lines.append("")
        lines.append(opt["name"])
        head = ["measure".ljust(26)] + [f"#{n + 1}".rjust(10) for n in range(len(studies))]
        head += [f"#{k + 1} - #1 [95% CI]".rjust(30) for k in range(1, len(studies))]
        lines.append("  " + " ".join(head))
        for m in result["measures"]:
            label, fmt = LABELS[m]
            fmt_d = fmt if fmt.startswith("+") else "+" + fmt
            row = [label.ljust(26)] + [_plain(s["measures"][m]["value"], fmt).rjust(10) for s in opt["studies"]]
            for d in opt["differences"]:
                x = (d["measures"] or {}).get(m) or {}
                if x.get("diff") is None:
                    row.append("-".rjust(30))
                    continue
                ci = x.get("ci")
                txt = _plain(x["diff"], fmt_d) + (f" [{_plain(ci[0], fmt_d)}, {_plain(ci[1], fmt_d)}]" if ci else "")
                row.append((txt + (" *" if x.get("excludes_zero") else "  ")).rjust(30))
            lines.append("  " + " ".join(row))
        lines += [f"  ! {w}" for w in opt["warnings"]]
    lines += [f"! {w}" for w in result.get("warnings", [])]
    lines.append("")
    lines.append("* the 95% bootstrap interval of the difference excludes zero. " + result["method"])
    return "\n".join(lines)


# --------------------------------------------------------------------------- the page

LABELS = {
    "best_value": ("best value", ".4f"),
    "interaction_share": ("interaction share", ".3f"),
    "interaction_share_rank": ("interaction share (ranks)", ".3f"),
    "optimal_wd_slope": ("best-wd slope", "+.2f"),
    "basin_tilt_deg": ("basin tilt (deg)", ".1f"),
    "coordinate_regret": ("one-at-a-time regret", ".4f"),
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px}h1{font-size:1.5em;margin:0 0 6px}h2{font-size:1.2em;margin:0 0 8px}
.card{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:16px 20px;margin:0 0 20px}
table{border-collapse:collapse;font-size:.92em}th,td{padding:4px 10px;border-bottom:1px solid #eceef1;text-align:left}
th{background:#fafbfc;font-weight:600}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:#777;font-size:.9em}.sig{font-weight:700;color:#0b5394}
ul.warn li{color:#8a4b00}.row{display:flex;flex-wrap:wrap;gap:12px}.row>figure{flex:1 1 300px;margin:0}
img{max-width:100%;height:auto}
"""


def _fmt(v: float | None, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    text = format(v, fmt)
    return format(0.0, fmt) if float(text) == 0 else text


def _with_ci(v: float | None, ci: list[float] | None, fmt: str) -> str:
    txt = _fmt(v, fmt)
    if v is not None and ci:
        txt += f" <span class='muted'>[{_fmt(ci[0], fmt)}, {_fmt(ci[1], fmt)}]</span>"
    return txt


def _diff_cell(d: dict | None, fmt: str) -> str:
    if not d or d.get("diff") is None:
        return "&ndash;"
    fmt = fmt if fmt.startswith("+") else "+" + fmt
    txt = _with_ci(d["diff"], d.get("ci"), fmt)
    if d.get("excludes_zero"):
        txt = f"<span class='sig' title='the 95% interval of the difference excludes 0'>{txt} &#8800;0</span>"
    return txt


def render_compare_html(result: dict[str, Any], reports: Sequence[dict] | None = None) -> str:
    """The comparison page: per optimizer a table (measure x study, then each difference) and,
    when ``reports`` are given, the studies' heat maps side by side."""
    from service.report import heatmap_png

    e = html.escape
    studies = result["studies"]
    title = "Comparison: " + " vs ".join(s.get("name") or s["study_id"] for s in studies)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main><h1>{e(title)}</h1>"]
    rows = "".join(
        f"<tr><td>{n + 1}</td><td><a href='/studies/{e(s['study_id'])}/report.html'>{e(s.get('name') or '')}</a></td>"
        f"<td>{e(str(s.get('task')))}</td><td>{e(str((s.get('schedule') or {}).get('name')))}</td>"
        f"<td class='num'>{e(str(s.get('epochs')))}</td><td>{e(', '.join(map(str, s.get('seeds') or [])))}</td>"
        f"<td>{e(str(s.get('decay_on')))}</td><td>{'yes' if s.get('wd_normalized') else 'no'}</td>"
        f"<td class='muted'>{e(s['study_id'])}</td></tr>"
        for n, s in enumerate(studies))
    parts.append("<section class='card'><h2>Studies</h2><table><tr><th>#</th><th>name</th><th>task</th>"
                 "<th>schedule</th><th>epochs</th><th>seeds</th><th>decay on</th><th>wd normalized</th>"
                 f"<th>id</th></tr>{rows}</table><p class='muted'>{e(result['method'])}</p>")
    if result.get("warnings"):
        parts.append("<ul class='warn'>" + "".join(f"<li>{e(w)}</li>" for w in result["warnings"]) + "</ul>")
    parts.append("</section>")
    for opt in result["optimizers"]:
        head = "".join(f"<th>#{n + 1} [95% CI]</th>" for n in range(len(studies)))
        head += "".join(f"<th>#{k + 1} &minus; #1 [95% CI]</th>" for k in range(1, len(studies)))
        body = []
        for m in result["measures"]:
            label, fmt = LABELS[m]
            cells = "".join(f"<td class='num'>{_with_ci(s['measures'][m]['value'], s['measures'][m]['ci'], fmt)}</td>"
                            for s in opt["studies"])
            cells += "".join(f"<td class='num'>{_diff_cell((d['measures'] or {}).get(m), fmt)}</td>"
                             for d in opt["differences"])
            body.append(f"<tr><th>{label}</th>{cells}</tr>")
        parts.append(f"<section class='card optimizer' id='opt-{e(opt['name'])}'><h2>{e(opt['name'])}</h2>"
                     f"<table><tr><th>measure</th>{head}</tr>{''.join(body)}</table>")
        if opt["warnings"]:
            parts.append("<ul class='warn'>" + "".join(f"<li>{e(w)}</li>" for w in opt["warnings"]) + "</ul>")
        if reports:
            figs = []
            for n, r in enumerate(reports):
                entry = next((x for x in r.get("optimizers", []) if x["name"] == opt["name"]), None)
                if entry and entry["grid"]["lr"] and entry["grid"]["wd"]:
                    figs.append(f"<figure><img class='heatmap' alt='heat map of study #{n + 1} for {e(opt['name'])}' "
                                f"src='{heatmap_png(entry, r.get('metric', 'val_error'), r.get('chance'))}'>"
                                f"<figcaption class='muted'>#{n + 1} {e(r.get('name') or '')}</figcaption></figure>")
            parts.append("<div class='row'>" + "".join(figs) + "</div>")
        parts.append("</section>")
    parts.append("<p class='muted'>&#8800;0: the 95% bootstrap interval of the difference excludes zero.</p>"
                 "</main></body></html>")
    return "".join(parts)
