"""A study's separability report: the JSON of ``docs/api.md``, the terminal table, the HTML page.

``build_report`` turns a study and its trials into the report dict (computed once when a study
finishes and cached by the API; also built on the fly, marked ``partial``, while it runs).
``format_table`` prints it for ``decouple demo`` / ``report`` / ``submit --wait``; ``render_html``
makes one self-contained page (PNG heat maps as data: URIs, inline CSS, no script, no external
request) that can be mailed or attached to a ticket.

The grid per optimizer: ``grid.value[i][j]`` is the metric at ``lr[i]``, ``wd[j]`` averaged over the
seeds that finished there, ``grid.se[i][j]`` its standard error, ``grid.per_seed[s][i][j]`` and
``grid.trial_ids[s][i][j]`` each seed's value and trial (:func:`per_seed_grid`). A cell where any
finished seed diverged is diverged (``null``, counted in ``grid.diverged``); a cell without a
finished seed is missing (``null``, ``grid.seeds[i][j] == 0``).
The measures come from ``service.analysis`` (see its docstring for the formulas and readings).

The reading per optimizer (``verdict``, one headline and the sentence that decided it) and the
ranking come from :func:`service.analysis.decide` (``decision``: the ridge slope of the good cells
with its 95 % interval, an equivalence test against +-0.5, the local interaction test and the
one-at-a-time regret from every start column in seed SDs and validation samples). ``parametrizations``
reads the same ridge in the other decay conventions the optimizer can be written in and in the
weight-averaging timescale tau (epochs). The older measures (interaction share, best-wd slope,
tilt) stay in the entry as evidence; none of them decides.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from service.analysis import basin_mask, decide, parametrizations, separability_with_ci
from service.domain import conventions
from service.domain import seeds as seeds_rule
from service.domain.catalog import TASK_INFO, chance_level, default_wd
from service.domain.numeric import json_safe
from service.report_style import REPORT_CSS

#: Ranking order of the verdicts: most separable first.
VERDICT_ORDER = {"separable": 0, "no_wd_effect": 1, "inconclusive": 2, "coupled": 3, "not_enough_data": 4}
METRIC_WORDS = {"val_error": "validation error", "val_loss": "validation loss"}


# --------------------------------------------------------------------------- JSON


def _axis(ax: Any, trials: list[dict], key: str) -> np.ndarray:
    """The designed log-spaced axis; else the distinct values the trials ran at."""
    if isinstance(ax, dict) and {"min", "max", "num"} <= ax.keys():
        return np.geomspace(float(ax["min"]), float(ax["max"]), int(ax["num"]))
    by_index = {t[f"{key}_index"]: t[key] for t in trials if t.get(f"{key}_index") is not None}
    return np.array([by_index[i] for i in sorted(by_index)], dtype=float)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _other_convention(name: str, best: dict | None, slope: float | None) -> dict | None:
    """What the grid means in the other decoupled convention: lam_paper = lr * lam_torch."""
    own = conventions.parse(name).convention
    if own == "l2" or not best:
        return None
    # constant decays like schedule, and corrected like lr, at the schedule's start (eta_t = 1)
    decay = "schedule" if own in ("schedule", "constant") else "lr"
    lr, wd = best["lr"], best["wd"]
    if decay == "schedule":
        other_wd, other_slope = wd / lr, (slope - 1 if slope is not None else None)
        sentence = (f"In PyTorch's convention (decay multiplied by lr, as torch.optim.AdamW) the best "
                    f"cell's wd is {wd:.3g} / {lr:.3g} = {other_wd:.3g}. A fixed wd here is a different "
                    "PyTorch wd at every lr")
        convention = "torch"
    else:
        other_wd, other_slope = wd * lr, (slope + 1 if slope is not None else None)
        sentence = (f"In the paper's convention (decay scaled by the schedule only, as adamw/sgdw here) "
                    f"the best cell's wd is {lr:.3g} x {wd:.3g} = {other_wd:.3g}. A fixed wd here is a "
                    "different paper wd at every lr")
        convention = "paper"
    sentence += (f", so the best-wd slope would read {other_slope:+.2f} there." if other_slope is not None
                 else ", which shifts the best-wd slope by " + ("-1." if decay == "schedule" else "+1."))
    # the best cell's wd in every decoupled convention, equal per-step decay at eta_t = 1
    per_step = wd * lr ** (conventions.LR_POWER[own] or 0)
    in_each = {c: per_step / lr ** p for c, p in conventions.LR_POWER.items() if p is not None}
    return {"convention": convention, "best_wd": other_wd, "optimal_wd_slope": other_slope,
            "sentence": sentence, "wd_in_each_convention": in_each}


HEADLINES = {
    "separable": "Separable: tune wd once and keep it when you change lr.",
    "coupled": "Coupled: the best wd moves with lr, so re-tune wd after changing lr.",
    "inconclusive": "Inconclusive: this grid cannot tell whether the best wd moves with lr.",
    "no_wd_effect": "Weight decay made no difference beyond seed noise on this grid: tune lr; wd can stay "
                    "anywhere in this range (widen it to see where wd starts to matter).",
}


def verdict(entry: dict) -> str:
    """The headline of the entry's ``decision`` and the sentence with the numbers that decided it."""
    d = entry.get("diagnostics", {})
    if d.get("all_diverged"):
        return "Every setting diverged: nothing to judge; try lower learning rates."
    dec = entry.get("decision") or {}
    if entry.get("separability") is None or not dec:
        return "Not enough finished cells to judge yet."
    if d.get("flat"):
        return "Neither lr nor wd changed the metric on this grid: nothing to judge."
    head = HEADLINES.get(dec["verdict"], "Not enough data to decide.")
    r = dec.get("regret") or {}
    lost = r.get("max_in_seed_sd")
    if dec["verdict"] == "coupled" and lost is not None and lost < 1:
        head = ("Coupled, mildly: the best wd moves with lr, but on this grid tuning lr, then wd, "
                "from any start wd loses less than one seed SD.")
    elif dec["verdict"] == "separable" and lost is not None and lost >= 1:
        head = "Separable, but the best lr depends on wd: tune wd once, then re-tune lr at that wd."
    return f"{head} {dec['reason']}"


def seed_grid(opt: dict, spec: dict, mine: list[dict], metric: str) -> dict[str, Any]:
    """One optimizer's grid trials as the S x n x m arrays ``decide`` reads (``mine``: its grid
    trials as dicts, ``store.trial_dict``): axes, values (inf = diverged), ``present``, counts."""
    lrs, wds = _axis(opt.get("lr"), mine, "lr"), _axis(opt.get("wd"), mine, "wd")
    seeds = seeds_rule.initial_seeds(spec.get("seeds") or [0])
    for t in mine:
        if t.get("seed") not in seeds:
            seeds.append(t.get("seed"))
    seeds = seeds or [0]
    n, m, S = len(lrs), len(wds), len(seeds)
    vals = np.full((S, n, m), np.nan)
    present = np.zeros((S, n, m), bool)
    ids: dict[tuple[int, int], list[tuple[int, Any]]] = {}
    running: dict[tuple[int, int], list[tuple[int, Any]]] = {}
    counts = {"total": len(mine), "done": 0, "failed": 0, "diverged": 0, "pending": 0}
    # Edge repair below an axis numbers its new points from -1 down (``origin``).
    oi, oj = ((opt.get(k) or {}).get("origin") or 0 for k in ("lr", "wd"))
    for t in mine:
        i, j = t.get("lr_index"), t.get("wd_index")
        if i is not None and j is not None:
            i, j = i - oi, j - oj
        if i is None or j is None or not (0 <= i < n and 0 <= j < m):
            continue
        status = t.get("status")
        if status != "done":
            counts["failed" if status == "failed" else "pending"] += 1
            if status == "running":  # its curve grows as epochs land: the page shows it on a click
                running.setdefault((i, j), []).append((t["id"], t.get("seed")))
            continue
        counts["done"] += 1
        s = seeds.index(t.get("seed"))
        v = t.get(metric)
        present[s, i, j] = True
        if t.get("diverged") or not _finite(v):
            counts["diverged"] += 1
            vals[s, i, j] = np.inf
        else:
            vals[s, i, j] = float(v)
        ids.setdefault((i, j), []).append((t["id"], t.get("seed")))
    return {"lrs": lrs, "wds": wds, "vals": vals, "present": present, "counts": counts, "ids": ids,
            "running": running, "seeds": seeds}


def _decide_args(name: str, spec: dict, metric: str) -> tuple[float | None, int | None]:
    dwd = None if spec.get("wd_normalized") or not conventions.is_known(name) else default_wd(name)
    info = TASK_INFO.get(spec.get("task") or "")
    return dwd, (info.val_size if info else None)


def optimizer_decision(opt: dict, spec: dict, trials: list[dict]) -> dict:
    """``decide`` on one optimizer's grid trials, exactly as the report reads it (the worker's
    seed rounds use it to choose whether an optimizer gets more seeds)."""
    metric = spec.get("metric", "val_error")
    try:
        chance = chance_level(spec.get("task") or "", metric)
    except KeyError:
        chance = None
    mine = [t for t in trials if t.get("optimizer") == opt["name"] and (t.get("phase") or "grid") == "grid"]
    g = seed_grid(opt, spec, mine, metric)
    dwd, val_size = _decide_args(opt["name"], spec, metric)
    return decide(g["lrs"], g["wds"], g["vals"], chance=chance, default_wd=dwd, present=g["present"],
                  val_size=val_size, error_metric=metric == "val_error")


def seed_rounds(spec: dict, name: str, present: np.ndarray) -> dict | None:
    """Under auto seeds: the seeds ``name`` got and why it stopped (the worker's record in the
    stored spec, ``seeds.given``), else None. ``stopped`` is null while it may still get more."""
    seeds = spec.get("seeds")
    if not seeds_rule.is_auto(seeds):
        return None
    rec = dict((seeds.get("given") or {}).get(name) or {})
    done = int(present.any(axis=(1, 2)).sum()) if present.size else 0
    return {"min": seeds.get("min"), "max": seeds.get("max"),
            "seeds": int(rec.get("seeds") or seeds.get("min")), "seeds_done": done,
            "stopped": rec.get("stopped"), "verdict": rec.get("verdict"),
            "seeds_to_decide": rec.get("seeds_to_decide")}


STOP_WORDS = {"decided": "decided", "reached_max": "reached max seeds",
              "seeds_will_not_decide": "more seeds would not decide it"}


def seed_rounds_text(rounds: dict | None) -> str | None:
    """One line for the table and the page: the seeds an optimizer got and why it stopped."""
    if not rounds:
        return None
    why = STOP_WORDS.get(rounds.get("stopped") or "", "may still get more")
    return (f"seeds until decided: {rounds['seeds']} of at most {rounds['max']} seeds, {why}"
            + (f" ({rounds['verdict']})" if rounds.get("stopped") and rounds.get("verdict") else ""))


def _optimizer_entry(opt: dict, spec: dict, trials: list[dict], metric: str, chance: float | None) -> dict:
    name = opt["name"]
    mine = [t for t in trials if t.get("optimizer") == name and (t.get("phase") or "grid") == "grid"]
    g = seed_grid(opt, spec, mine, metric)
    lrs, wds = g["lrs"], g["wds"]
    if not (len(lrs) and len(wds)):
        return _unplaced_entry(name, len(mine))
    vals, present, counts, ids = g["vals"], g["present"], g["counts"], g["ids"]
    dwd, val_size = _decide_args(name, spec, metric)
    res = separability_with_ci(lrs, wds, vals, chance=chance, default_wd=dwd, present=present)
    info = TASK_INFO.get(spec.get("task") or "")
    dec = decide(lrs, wds, vals, chance=chance, default_wd=dwd, present=present, val_size=val_size,
                 error_metric=metric == "val_error")
    batch = spec.get("batch_size") or (info.batch_size if info else None)
    ipe = math.ceil(info.train_size / batch) if info and info.train_size and batch else None
    sched = (spec.get("schedule") or {}).get("name")
    params = parametrizations(lrs, wds, dec, conventions.parse(name).convention, iters_per_epoch=ipe,
                              constant_schedule=sched == "constant")
    if dec.get("ridge"):
        for k in ("_means", "_counts"):
            dec["ridge"].pop(k, None)
    finished = present.sum(axis=0)
    diverged = (present & ~np.isfinite(vals)).sum(axis=0)
    mean = np.where(present & np.isfinite(vals), vals, 0.0).sum(axis=0) / np.maximum(finished, 1)
    value = np.where((finished > 0) & (diverged == 0), mean, np.nan)
    variant = conventions.parse(name)
    entry = {
        "name": name,
        "title": variant.title,
        "base": variant.base,
        "convention": variant.convention,
        "decay_convention": variant.decay_convention,
        "rule": variant.rule,
        **{k: res[k] for k in ("best", "interaction_share", "interaction_share_rank", "optimal_wd_slope",
                               "basin_tilt_deg", "basin_angle_deg", "coordinate_regret",
                               "coordinate_trials", "separability", "ci", "noise", "unreliable",
                               "diagnostics", "warnings")},
        "grid": {"lr": lrs, "wd": wds, "value": value, "diverged": diverged, "seeds": finished,
                 "basin": basin_mask(np.where(finished > 0, np.where(diverged > 0, np.inf, mean), np.nan)),
                 **per_seed_grid(g, value)},
        "trials": counts,
        "default_wd": dwd,
        "other_convention": _other_convention(name, res["best"], res["optimal_wd_slope"]),
        "decision": dec,
        "parametrizations": params,
    }
    if params:
        entry["parametrizations"]["sentence"] = parametrization_sentence(params)
    entry["placement"] = placement(opt)
    entry["pilot"] = pilot_grid(name, trials, metric)
    entry["seed_rounds"] = seed_rounds(spec, name, present)
    if counts["failed"]:
        entry["warnings"].append(f"{counts['failed']} trial(s) failed (an error, not divergence) and "
                                 "are left out of the averages.")
    bi = res["diagnostics"].get("best_index")
    entry["_best_ids"] = ids.get(tuple(bi), []) if bi is not None else []
    entry["verdict"] = verdict(entry)
    return entry


def per_seed_grid(g: dict, value: np.ndarray) -> dict[str, Any]:
    """What the study page shows per cell beside the mean (``grid.value``): ``se``, the standard
    error of that mean (sample SD over the finished seeds / sqrt(their count); null with fewer
    than two, or where ``value`` is null); ``seed_list``, the seed numbers, and per seed
    ``per_seed[s][i][j]``, the seed's metric (null: not finished, or diverged) and
    ``trial_ids[s][i][j]`` (null: no such trial), for its curve (``GET .../trials/{id}/curve``);
    ``running_ids[s][i][j]``, the seed's trial while it runs (null otherwise): its curve so far.
    A running trial's latest epoch is not in ``per_seed`` nor in the measures, which compare
    finished trials only (a value at epoch 3 of 20 is not comparable with a final one)."""
    vals, present = g["vals"], g["present"]
    ok = present & np.isfinite(vals)
    k = ok.sum(axis=0)
    mean = np.where(ok, vals, 0.0).sum(axis=0) / np.maximum(k, 1)
    ss = np.where(ok, (np.where(ok, vals, 0.0) - mean) ** 2, 0.0).sum(axis=0)
    sd = np.sqrt(ss / np.maximum(k - 1, 1))
    se = np.where((k >= 2) & np.isfinite(value), sd / np.sqrt(np.maximum(k, 1)), np.nan)
    seeds = list(g["seeds"])
    trial_ids: list[list[list[int | None]]] = [[[None] * vals.shape[2] for _ in range(vals.shape[1])]
                                               for _ in seeds]
    running_ids = [[[None] * vals.shape[2] for _ in range(vals.shape[1])] for _ in seeds]
    for target, members_of in ((trial_ids, g["ids"]), (running_ids, g.get("running") or {})):
        for (i, j), members in members_of.items():
            for tid, seed in members:
                target[seeds.index(seed)][i][j] = tid
    return {"se": se, "seed_list": seeds, "per_seed": np.where(ok, vals, np.nan), "trial_ids": trial_ids,
            "running_ids": running_ids}


def placement(opt: dict) -> dict:
    """How each axis was placed: ``given`` (the user's), ``auto`` (by the pilot; also while it
    waits for it) or ``extended`` (by edge repair)."""
    out = {}
    for key in ("lr", "wd"):
        ax = opt.get(key) or {}
        out[key] = ax.get("placement") or ("auto" if ax.get("auto") else "given")
    return out


def pilot_grid(name: str, trials: list[dict], metric: str) -> dict | None:
    """The optimizer's pilot (phase ``pilot``, one seed) as a grid; None when it had none.

    Shown greyed in the HTML page; never part of the grid's measures.
    """
    mine = [t for t in trials if t.get("optimizer") == name and t.get("phase") == "pilot"]
    if not mine:
        return None
    lrs = {t["lr_index"]: t["lr"] for t in mine}
    wds = {t["wd_index"]: t["wd"] for t in mine}
    li, wi = sorted(lrs), sorted(wds)
    value = np.full((len(li), len(wi)), np.nan)
    for t in mine:
        v = t.get(metric)
        if t.get("status") == "done" and not t.get("diverged") and _finite(v):
            value[li.index(t["lr_index"]), wi.index(t["wd_index"])] = float(v)
    return {"lr": [lrs[i] for i in li], "wd": [wds[j] for j in wi], "value": value}


def pilot_png(pilot: dict) -> str:
    """A small grey heat map of the pilot (darker = better; blank = diverged or not run)."""
    return _png(pilot_figure(pilot))


def pilot_figure(pilot: dict) -> Any:
    """:func:`pilot_png`'s figure."""
    from matplotlib.figure import Figure

    val = _arr(pilot["value"])
    fig = Figure(figsize=(2.6, 2.2))
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(val.T), origin="lower", cmap="Greys_r", aspect="auto")
    ax.set_xticks(range(len(pilot["lr"])), [_tick(v) for v in pilot["lr"]], rotation=45,
                  ha="right", fontsize=6)
    ax.set_yticks(range(len(pilot["wd"])), [_tick(v) for v in pilot["wd"]], fontsize=6)
    ax.set_title("pilot", fontsize=8, color="#777777")
    fig.subplots_adjust(left=0.25, right=0.97, top=0.88, bottom=0.3)
    return fig


def _unplaced_entry(name: str, n_trials: int) -> dict:
    """An optimizer whose ``auto`` grid has not been placed by its pilot run yet."""
    variant = conventions.parse(name)
    none = dict.fromkeys(("best", "interaction_share", "interaction_share_rank", "optimal_wd_slope",
                          "basin_tilt_deg", "basin_angle_deg", "coordinate_regret", "coordinate_trials",
                          "separability", "other_convention", "default_wd", "decision",
                          "parametrizations"))
    return {"name": name, "title": variant.title, "base": variant.base, "convention": variant.convention,
            "decay_convention": variant.decay_convention,
            "rule": variant.rule, **none, "ci": {}, "noise": {}, "unreliable": [], "diagnostics": {},
            "warnings": ["The grid is not placed yet: its auto axis waits for the pilot run."],
            "grid": {"lr": [], "wd": [], "value": [], "diverged": [], "seeds": [], "basin": [], "se": [],
                     "seed_list": [], "per_seed": [], "trial_ids": []},
            "trials": {"total": n_trials, "done": 0, "failed": 0, "diverged": 0, "pending": n_trials},
            "_best_ids": [], "verdict": "Not enough finished cells to judge yet."}


def _bounds(ci: list) -> tuple[float, float]:
    """An interval with ``None`` (unbounded, as JSON writes it) read as -inf / +inf."""
    return (-math.inf if ci[0] is None else ci[0]), (math.inf if ci[1] is None else ci[1])


def _rank_key(e: dict) -> tuple:
    """Verdict class first (VERDICT_ORDER); within a class, how far from 0 the ridge slope's
    interval reaches (coupled: how close it comes to 0, nearer = less coupled); then the old
    separability."""
    dec = e.get("decision") or {}
    v = dec.get("verdict", "not_enough_data")
    ci = dec.get("ridge_slope_ci")
    reach = math.inf
    if ci and dec.get("ridge_slope") is not None:
        lo, hi = _bounds(ci)
        reach = min(abs(lo), abs(hi)) if v == "coupled" else max(abs(lo), abs(hi))
    return (VERDICT_ORDER.get(v, 4), reach, -(e.get("separability") or 0.0))


def _rank(entries: list[dict]) -> tuple[list[str], list[str]]:
    """Most separable first (by ``decision``); warnings where neighbours cannot be told apart."""
    ranked = sorted((e for e in entries if e["separability"] is not None), key=_rank_key)
    warnings = []
    for a, b in itertools.pairwise(ranked):
        da, db = a.get("decision") or {}, b.get("decision") or {}
        if da.get("verdict") != db.get("verdict"):
            continue
        ca, cb = da.get("ridge_slope_ci"), db.get("ridge_slope_ci")
        if ca and cb:
            (lo_a, hi_a), (lo_b, hi_b) = _bounds(ca), _bounds(cb)
            if lo_a <= hi_b and lo_b <= hi_a:
                warnings.append(f"{a['name']} and {b['name']} are both {da['verdict'].replace('_', ' ')} "
                                f"and their ridge-slope intervals overlap ({_ci_text(ca)} and {_ci_text(cb)}), "
                                "so their order is not a finding.")
        else:
            warnings.append(f"{a['name']} and {b['name']} are both {da.get('verdict', '?').replace('_', ' ')} "
                            "without a ridge slope: their order is arbitrary.")
    if ranked and all(e["ci"].get("separability") is None for e in ranked) and len(ranked) > 1:
        warnings.append("No intervals (one seed): the ranking is provisional.")
    unranked = [e["name"] for e in entries if e["separability"] is None]
    if unranked:
        warnings.append(f"Not ranked (no complete grid or nothing to measure): {', '.join(unranked)}.")
    return [e["name"] for e in ranked], warnings


def _ci_text(ci: list) -> str:
    lo = "-inf" if ci[0] is None or not math.isfinite(ci[0]) else f"{ci[0]:+.2f}"
    hi = "+inf" if ci[1] is None or not math.isfinite(ci[1]) else f"{ci[1]:+.2f}"
    return f"[{lo}, {hi}]"


SYSTEM_WORDS = {"schedule": "the paper's convention", "lr": "PyTorch's convention (lr-scaled)",
                "constant": "the constant-decay convention", "corrected": "the corrected convention",
                "tau_epochs": "timescale tau (epochs)", "tau_iterations": "timescale tau (iterations)"}


def parametrization_sentence(params: dict) -> str:
    """Where the optimum is axis-aligned, with each system's ridge slope, and the best tau."""
    parts = []
    for o in params["systems"]:
        s = o["ridge_slope"]
        slope = "slope -" if s is None else f"slope {s:+.2f} {_ci_text(o['ridge_slope_ci'])}"
        parts.append(f"{SYSTEM_WORDS.get(o['coordinates'], o['coordinates'])}: {slope}, "
                     f"{o['reading'].replace('_', '-')}")
    aligned = params["axis_aligned_in"]
    head = ("The optimum is axis-aligned in " + ", ".join(SYSTEM_WORDS.get(a, a) for a in aligned)
            if aligned else "The optimum is axis-aligned in none of the coordinate systems (within +-0.5)")
    text = f"{head} ({'; '.join(parts)})."
    if params.get("best_tau") is not None:
        text += f" Best cell's tau = {params['best_tau']:.3g} {params['tau_unit']}"
        rng = params.get("tau_range_top_cells")
        if rng:
            text += f" (the 10 best cells span {rng[0]:.3g}-{rng[1]:.3g})"
        text += "."
    return text


#: What the report says of a torch.optim fallback rule (``service.domain.plugins.RuleInfo``).
TORCH_FALLBACK_NOTE = ("a torch.optim.Optimizer run as a fallback: one instance per config over its slice of "
                       "the packed parameters, K Python-level steps per step (slower than a packed rule)")


def plugins_used(study: dict) -> list[dict[str, Any]]:
    """The plugins a study recorded at submission: name, kind, distribution, version, and a note
    for a torch.optim fallback rule (the registry of this process says which kind it is)."""
    from service.domain.plugins import registry

    out = []
    for key, dist in sorted((study.get("plugins") or {}).items()):
        kind, _, name = key.partition(":")
        entry: dict[str, Any] = {"kind": kind, "name": name, **dist}
        rule = registry().rules.get(name) if kind == "rule" else None
        if rule is not None and rule.kind == "torch":
            entry["note"] = TORCH_FALLBACK_NOTE
        out.append(entry)
    return out


def _plugin_text(p: dict[str, Any]) -> str:
    text = f"{'update rule' if p['kind'] == 'rule' else 'task'} {p['name']} from {p['distribution']} {p['version']}"
    return text + (f" ({p['note']})" if p.get("note") else "")


def build_report(study: dict, trials: list[dict],
                 load_curves: Callable[[list[int]], dict[int, list[dict]]]) -> dict:
    """The report JSON (``docs/api.md``) for one study (JSON-ready: non-finite numbers are None)."""
    spec = study.get("spec") or {}
    metric = spec.get("metric", "val_error")
    task = spec.get("task")
    try:
        chance = chance_level(task, metric)
    except KeyError:
        chance = None
    entries = [_optimizer_entry(o, spec, trials, metric, chance) for o in spec.get("optimizers", [])]
    for o, e in zip(spec.get("optimizers", []), entries, strict=True):
        e.setdefault("placement", placement(o))
        e.setdefault("pilot", pilot_grid(e["name"], trials, metric))
    wanted = [tid for e in entries for tid, _ in e["_best_ids"]]
    curves = load_curves(wanted) if wanted else {}
    for e in entries:
        e["best_curves"] = [{"trial_id": tid, "seed": seed, "curve": curves.get(tid, [])}
                            for tid, seed in e.pop("_best_ids")]
    ranking, warnings = _rank(entries)
    status = study.get("status")
    partial = status != "done"
    if partial:
        warnings.insert(0, f"The study is {status}: this report is partial and will change.")
    report = {
        "study_id": study.get("id"), "name": study.get("name"), "status": status, "owner": study.get("owner"),
        "created_at": study.get("created_at"), "finished_at": study.get("finished_at"),
        "task": task, "metric": metric, "chance": chance, "partial": partial,
        "seeds": spec.get("seeds"), "epochs": spec.get("epochs"), "schedule": spec.get("schedule"),
        "wd_normalized": bool(spec.get("wd_normalized", False)),
        "plugins": plugins_used(study),
        "optimizers": entries, "ranking": ranking, "warnings": warnings,
    }
    return json_safe(report)


def study_report(engine: Any, study_id: str) -> dict[str, Any]:
    """A study's report, from its stored row when done and cached, else built (and cached when
    the study is done). Building happens in a read-only transaction, caching in a short write."""
    from service import store
    from service.db import session_scope

    with session_scope(engine, read_only=True) as session:
        report, needs_caching = store.compute_report(session, study_id, build_report)
    if needs_caching:
        with session_scope(engine) as session:
            store.cache_report(session, study_id, report)
    return report


# --------------------------------------------------------------------------- terminal table


def _f(v: float, fmt: str) -> str:
    """format(), without the "-0.00" that a tiny negative rounds to."""
    text = format(v, fmt)
    return format(0.0, fmt) if float(text) == 0 else text


def _num(v: Any, fmt: str = ".3g") -> str:
    return "-" if v is None else _f(v, fmt)


def _with_ci(e: dict, key: str, fmt: str) -> str:
    v = e.get(key)
    if v is None:
        return "-"
    ci = (e.get("ci") or {}).get(key)
    mark = "?" if key in (e.get("unreliable") or []) else ""
    return f"{_f(v, fmt)}{mark}" + (f" [{_f(ci[0], fmt)}, {_f(ci[1], fmt)}]" if ci else "")


def _ridge_text(dec: dict) -> str:
    s, ci = dec.get("ridge_slope"), dec.get("ridge_slope_ci")
    if s is None:
        return "-"
    return f"{_f(s, '+.2f')} {_ci_text(ci)}" if ci else _f(s, "+.2f")


def _regret_text(dec: dict) -> str:
    r = dec.get("regret") or {}
    if r.get("max") is None:
        return "-"
    txt = _f(r["max"], ".3g")
    return txt + (f" ({r['max_in_seed_sd']:.2f})" if r.get("max_in_seed_sd") is not None else "")


def format_table(report: dict) -> str:
    """The separability table for a terminal: one row per optimizer, most separable first."""
    metric = report.get("metric", "val_error")
    order = {n: i for i, n in enumerate(report.get("ranking", []))}
    entries = sorted(report.get("optimizers", []), key=lambda e: order.get(e["name"], len(order)))
    head = ["rank", "optimizer", f"best {metric}", "at lr, wd", "verdict", "ridge slope [95% CI]",
            "regret max (seed SD)", "separability [95% CI]"]
    rows = []
    for e in entries:
        best = e.get("best") or {}
        rows.append([
            str(order[e["name"]] + 1) if e["name"] in order else "-",
            e["name"],
            _num(best.get("value"), ".4g"),
            f"{best['lr']:.2g}, {best['wd']:.2g}" if best else "-",
            (e.get("decision") or {}).get("verdict", "-"),
            _ridge_text(e.get("decision") or {}),
            _regret_text(e.get("decision") or {}),
            _with_ci(e, "separability", ".2f"),
        ])
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    title = f"Study {report.get('study_id')}"
    if report.get("name"):
        title += f" \"{report['name']}\""
    title += f": {report.get('status')}, {METRIC_WORDS.get(metric, metric)} (lower is better)"
    if report.get("partial"):
        title += " - PARTIAL"
    out = [title, *(f"plugin: {_plugin_text(p)}" for p in report.get("plugins") or []), "",
           line(head), line(["-" * w for w in widths]), *map(line, rows), ""]
    for e in entries:
        out.append(f"{e['name']}: {e.get('verdict', '')}")
        if (e.get("parametrizations") or {}).get("sentence"):
            out.append(f"  {e['parametrizations']['sentence']}")
        if seed_rounds_text(e.get("seed_rounds")):
            out.append(f"  {seed_rounds_text(e.get('seed_rounds'))}")
        out.extend(f"  ! {w}" for w in e.get("warnings", []))
    if report.get("warnings"):
        out.append("")
        out.extend(f"! {w}" for w in report["warnings"])
    out.append("")
    out.append("verdict: separable = the ridge slope's 95% interval lies inside +-0.5, coupled = it excludes "
               "0 and |slope| >= 0.5; ridge slope: how many decades the best wd moves per decade of lr (0 tune "
               "wd once, -1 only lr*wd matters), from a quadratic fit near the optimum; regret: metric lost "
               "by tuning lr then wd one at a time, worst start wd, in seed SDs; separability = 1 - "
               "interaction share. '?' = interval too wide to rank on.")
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML page


def _tick(v: float) -> str:
    """Compact log-axis labels: 1e-4, 3.2e-4, 1e-3 (two significant digits)."""
    mant, exp = f"{v:.1e}".split("e")
    return f"{float(mant):g}e{int(exp)}"


def _plain_ticks(axis) -> None:
    """Decimal tick labels (0.04, 0.1) instead of matplotlib's 4x10^-2 on log scales."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    # minor ticks: label only 2x and 5x, so a decade holds three labels, not nine
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2g}" if f"{v:.0e}"[0] in "25" else ""))


def _png(fig) -> str:
    return "data:image/png;base64," + base64.b64encode(figure_bytes(fig, "png")).decode("ascii")


#: The formats a figure is exported in, and their media types.
FIGURE_FORMATS = {"png": "image/png", "svg": "image/svg+xml"}


def figure_bytes(fig: Any, fmt: str) -> bytes:
    """A matplotlib figure as PNG (110 dpi, as on the page) or SVG (text as paths: no font needed
    to open it; no date in its metadata, so the same report gives the same file)."""
    buf = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buf, format="svg", metadata={"Date": None})
    else:
        fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _arr(rows: list, dtype=float) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=dtype)


def heatmap_png(entry: dict, metric: str, chance: float | None = None) -> str:
    """:func:`heatmap_figure` as a PNG data URI."""
    return _png(heatmap_figure(entry, metric, chance))


def heatmap_figure(entry: dict, metric: str, chance: float | None = None) -> Any:
    """Figure 2 of the paper for one optimizer.

    x = lr, y = wd (log-spaced cells, tick labels at every cell), colour = metric (log scale when
    positive: errors span decades); the TOP_K basin circled, the best cell starred, diverged cells
    grey with an x, cells with no finished trial blank with a '?'.
    """
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    g = entry["grid"]
    lrs, wds = g["lr"], g["wd"]
    val = _arr(g["value"])
    div = _arr(g["diverged"]) > 0
    miss = _arr(g["seeds"]) == 0
    basin = _arr(g["basin"]) > 0
    n, m = val.shape
    fig = Figure(figsize=(5.6, 4.6))
    ax = fig.add_subplot()
    finite = val[np.isfinite(val)]
    norm = Normalize()
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        if chance is not None:
            hi = min(hi, chance)
        if lo > 0 and hi > lo * 1.0001:
            norm = LogNorm(vmin=lo, vmax=hi)
        else:
            norm = Normalize(vmin=lo, vmax=max(hi, lo + 1e-12))
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis_r"].with_extremes(bad="#d9d9d9", over="#440154")
    im = ax.imshow(np.ma.masked_invalid(val.T), origin="lower", cmap=cmap, norm=norm, aspect="auto")
    cb = fig.colorbar(im, ax=ax, extend="max" if chance is not None and finite.size
                      and finite.max() > chance else "neither")
    cb.set_label(METRIC_WORDS.get(metric, metric))
    if isinstance(norm, LogNorm):
        _plain_ticks(cb.ax.yaxis)
    ax.set_xticks(range(n), [_tick(v) for v in lrs], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(m), [_tick(v) for v in wds], fontsize=8)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("weight decay (log scale)")
    small = n <= 12 and m <= 12
    for i in range(n):
        for j in range(m):
            if miss[i, j]:
                ax.text(i, j, "?", ha="center", va="center", fontsize=9, color="#555555")
            elif div[i, j]:
                ax.plot(i, j, marker="x", color="#b00020", markersize=9, mew=2)
            elif small and np.isfinite(val[i, j]):
                rgba = im.cmap(im.norm(val[i, j]))
                light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
                ax.text(i, j, f"{val[i, j]:.2g}", ha="center", va="center", fontsize=6.5,
                        color="black" if light else "white")
    bi, bj = np.nonzero(basin)
    ax.scatter(bi, bj, s=330 if small else 120, facecolors="none", edgecolors="black", linewidths=1.3,
               label="top-10 cells")
    best = entry.get("diagnostics", {}).get("best_index")
    if best is not None:
        # in the cell's corner, so the value stays readable
        ax.scatter([best[0] - 0.3], [best[1] + 0.3], marker="*", s=150, color="white",
                   edgecolors="black", linewidths=1.0, zorder=5, label="best")
    if div.any():
        ax.plot([], [], marker="x", color="#b00020", ls="", mew=2, label="diverged")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    sep = entry.get("separability")
    ax.set_title(f"{entry['name']}: separability {sep:.2f}" if sep is not None else entry["name"],
                 fontsize=11)
    fig.subplots_adjust(left=0.17, right=0.97, top=0.92, bottom=0.27)
    return fig


def curves_png(entry: dict, metric: str) -> str | None:
    """:func:`curves_figure` as a PNG data URI, or None without curves."""
    fig = curves_figure(entry, metric)
    return None if fig is None else _png(fig)


def curves_figure(entry: dict, metric: str) -> Any:
    """The best cell's learning curves (each seed): losses left, validation error right; None
    when the best cell has no recorded epoch."""
    from matplotlib.figure import Figure

    curves = [c for c in entry.get("best_curves", []) if c.get("curve")]
    if not curves:
        return None
    fig = Figure(figsize=(7.6, 2.8))
    ax_loss, ax_err = fig.subplots(1, 2)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for k, c in enumerate(curves):
        col = colours[k % len(colours)]
        ep = [p.get("epoch") for p in c["curve"]]
        get = lambda key: [np.nan if p.get(key) is None else p[key] for p in c["curve"]]  # noqa: E731
        ax_loss.plot(ep, get("train_loss"), ls="--", color=col, lw=1.2, label=f"train, seed {c['seed']}")
        ax_loss.plot(ep, get("val_loss"), color=col, lw=1.5, label=f"val, seed {c['seed']}")
        ax_err.plot(ep, get("val_error"), color=col, lw=1.5, label=f"seed {c['seed']}")
    ax_loss.set_yscale("log")
    _plain_ticks(ax_loss.yaxis)
    from matplotlib.ticker import MaxNLocator

    for a in (ax_loss, ax_err):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("validation error")
    ax_loss.legend(fontsize=7)
    ax_err.legend(fontsize=7)
    for a in (ax_loss, ax_err):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


#: The figures of an optimizer's report entry: ``GET /studies/{id}/figures/{optimizer}/{name}.{png|svg}``.
FIGURES = ("heatmap", "curves", "pilot")


def optimizer_figure(report: dict, optimizer: str, name: str, fmt: str) -> bytes:
    """One figure of one optimizer of a report (:data:`FIGURES`) as PNG or SVG bytes: the same
    drawing as the page's. :class:`~service.errors.NotFound` for an optimizer the study does not
    have, or a figure it has none of yet (no grid placed, no curve recorded, no pilot run)."""
    from service.errors import NotFound

    if name not in FIGURES or fmt not in FIGURE_FORMATS:
        raise NotFound(f"no figure {name}.{fmt} (figures: {', '.join(FIGURES)}; formats: png, svg)")
    entry = next((e for e in report.get("optimizers", []) if e.get("name") == optimizer), None)
    if entry is None:
        names = ", ".join(e.get("name", "?") for e in report.get("optimizers", []))
        raise NotFound(f"study {report.get('study_id')} has no optimizer {optimizer!r} (it has {names})")
    metric = report.get("metric", "val_error")
    fig: Any = None
    if name == "heatmap" and entry["grid"]["lr"] and entry["grid"]["wd"]:
        fig = heatmap_figure(entry, metric, report.get("chance"))
    elif name == "curves":
        fig = curves_figure(entry, metric)
    elif name == "pilot" and entry.get("pilot"):
        fig = pilot_figure(entry["pilot"])
    if fig is None:
        raise NotFound(f"{optimizer} has no {name} figure yet" + {
            "heatmap": " (its grid waits for the pilot run)", "curves": " (no epoch of its best cell recorded)",
            "pilot": " (it had no pilot run)"}[name])
    return figure_bytes(fig, fmt)




def _e(v: Any) -> str:
    return html.escape(str(v))


def _cell(e: dict, key: str, fmt: str) -> str:
    v = e.get(key)
    if v is None:
        return "&ndash;"
    ci = (e.get("ci") or {}).get(key)
    txt = _f(v, fmt)
    if ci:
        txt += f" <span class='muted'>[{_f(ci[0], fmt)}, {_f(ci[1], fmt)}]</span>"
    if key in (e.get("unreliable") or []):
        txt += " <span title='interval too wide to rank on'>?</span>"
    return txt


def _measures_table(e: dict) -> str:
    rows = [
        ("separability", "separability", ".2f", "1 &minus; interaction share; 1 = additive in log lr, log wd"),
        ("interaction share", "interaction_share", ".3f", "SS<sub>lr&times;wd</sub> / SS, two-way ANOVA"),
        ("interaction share (ranks)", "interaction_share_rank", ".3f", "the same on ranks, robustness check"),
        ("best-wd slope", "optimal_wd_slope", "+.2f", "0: tune wd once; &minus;1: only lr&middot;wd matters"),
        ("basin tilt (deg)", "basin_tilt_deg", ".1f", "0 axis-aligned, 45 diagonal"),
        ("one-at-a-time regret", "coordinate_regret", ".3g", "metric lost tuning lr, then wd"),
    ]
    body = "".join(f"<tr><th>{label}</th><td class='num'>{_cell(e, key, fmt)}</td><td class='muted'>{help_}</td></tr>"
                   for label, key, fmt, help_ in rows)
    best = e.get("best")
    if best:
        body = (f"<tr><th>best cell</th><td class='num'>{best['value']:.4g}"
                f"{_ci_span(e, 'best_value', '.4g')}</td><td class='muted'>at lr {best['lr']:.3g}, "
                f"wd {best['wd']:.3g}</td></tr>") + body
    t = e.get("coordinate_trials")
    if t:
        body += (f"<tr><th>trials</th><td class='num'>{t['one_at_a_time']} vs {t['full_grid']}</td>"
                 "<td class='muted'>one at a time vs the full grid</td></tr>")
    return f"<table class='measures'>{body}</table>"


def _ci_span(e: dict, key: str, fmt: str) -> str:
    ci = (e.get("ci") or {}).get(key)
    return f" <span class='muted'>[{_f(ci[0], fmt)}, {_f(ci[1], fmt)}]</span>" if ci else ""


def render_html(report: dict) -> str:
    """One self-contained page: ranking, then per optimizer its heat map, measures and curves."""
    metric = report.get("metric", "val_error")
    order = {n: i for i, n in enumerate(report.get("ranking", []))}
    entries = sorted(report.get("optimizers", []), key=lambda e: order.get(e["name"], len(order)))
    title = f"Separability report: {report.get('name') or report.get('study_id')}"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<link rel='icon' href='data:,'><title>{_e(title)}</title><style>{REPORT_CSS}</style></head>"
             f"<body><main><h1>{_e(title)}</h1>"]
    sched = report.get("schedule") or {}
    meta = [f"study {report.get('study_id')}", f"task {report.get('task')}",
            f"metric {METRIC_WORDS.get(metric, metric)} (lower is better)", f"status {report.get('status')}"]
    if report.get("seeds") is not None:
        sd = report["seeds"]
        meta.append(f"seeds auto, {sd.get('min')} to {sd.get('max')}" if seeds_rule.is_auto(sd)
                    else f"seeds {', '.join(map(str, sd))}")
    if sched.get("name"):
        meta.append(f"{sched['name']} schedule")
    if report.get("epochs"):
        meta.append(f"{report['epochs']} epochs")
    if report.get("wd_normalized"):
        meta.append("wd axis is normalized (&lambda;<sub>norm</sub>)")
    parts.append(f"<p class='meta'>{' &middot; '.join(_e(x) if '&' not in x else x for x in meta)}</p>")
    if report.get("plugins"):
        items = "".join(f"<li>{_e(_plugin_text(p))}</li>" for p in report["plugins"])
        parts.append(f"<p class='meta'>Plugins this study used:</p><ul class='plugins'>{items}</ul>")
    if report.get("partial"):
        parts.append(f"<div class='banner'>Partial report: the study is {_e(report.get('status'))}; "
                     "numbers will change as trials finish.</div>")
    # summary
    rows = []
    for e in entries:
        rank = order.get(e["name"])
        rows.append(f"<tr><td>{rank + 1 if rank is not None else '&ndash;'}</td>"
                    f"<td><a href='#opt-{_e(e['name'])}'>{_e(e['name'])}</a></td>"
                    f"<td>{_e((e.get('decision') or {}).get('verdict', '-'))}</td>"
                    f"<td class='num'>{_e(_ridge_text(e.get('decision') or {}))}</td>"
                    f"<td class='num'>{_cell(e, 'separability', '.2f')}</td>"
                    f"<td>{_e(e.get('verdict', ''))}</td>"
                    f"<td class='muted'>{_e(e.get('decay_convention', ''))}</td></tr>")
    parts.append("<section class='card' id='summary'><h2>Ranking: most separable first</h2>"
                 "<table><tr><th>#</th><th>optimizer</th><th>verdict</th><th>ridge slope [95% CI]</th>"
                 "<th>separability [95% CI]</th><th>what it means for tuning</th><th>decay convention</th></tr>"
                 + "".join(rows) + "</table>")
    if report.get("warnings"):
        parts.append("<ul class='warn'>" + "".join(f"<li>{_e(w)}</li>" for w in report["warnings"]) + "</ul>")
    parts.append("</section>")
    for e in entries:
        parts.append(f"<section class='card optimizer' id='opt-{_e(e['name'])}'>"
                     f"<h2>{_e(e['name'])} &mdash; {_e(e.get('title', ''))}</h2>"
                     f"<p class='verdict'>{_e(e.get('verdict', ''))}</p>"
                     f"<p class='conv'>Base: {_e(e.get('base', ''))}; convention: "
                     f"{_e(e.get('convention', ''))} ({_e(e.get('decay_convention', ''))}). "
                     f"Update: <code>{_e(e.get('rule', ''))}</code></p>")
        heat = (f"<img class='heatmap' alt='heat map of {_e(metric)} over lr and wd for {_e(e['name'])}' "
                f"src='{heatmap_png(e, metric, report.get('chance'))}'>" if e["grid"]["lr"] and e["grid"]["wd"]
                else "<p class='muted'>No grid yet.</p>")
        parts.append(f"<div class='row'><div>{heat}</div><div>{_measures_table(e)}")
        if (e.get("parametrizations") or {}).get("sentence"):
            parts.append(f"<p class='conv'>{_e(e['parametrizations']['sentence'])}</p>")
        elif e.get("other_convention"):
            parts.append(f"<p class='conv'>{_e(e['other_convention']['sentence'])}</p>")
        if e.get("warnings"):
            parts.append("<ul class='warn'>" + "".join(f"<li>{_e(w)}</li>" for w in e["warnings"]) + "</ul>")
        if seed_rounds_text(e.get("seed_rounds")):
            parts.append(f"<p class='muted'>{_e(seed_rounds_text(e.get('seed_rounds')))}</p>")
        pl = e.get("placement") or {}
        if pl:
            parts.append(f"<p class='muted'>placed: lr {_e(pl.get('lr'))}, wd {_e(pl.get('wd'))}</p>")
        if e.get("pilot"):
            parts.append(f"<img class='pilot' alt='pilot run of {_e(e['name'])} "
                         f"(one seed, not in the measures)' src='{pilot_png(e['pilot'])}'>")
        t = e.get("trials") or {}
        parts.append(f"<p class='muted'>trials: {t.get('done', 0)} done ({t.get('diverged', 0)} diverged), "
                     f"{t.get('failed', 0)} failed, {t.get('pending', 0)} pending</p></div></div>")
        curves = curves_png(e, metric)
        if curves:
            parts.append(f"<figure><img class='curves' alt='learning curves of the best cell for "
                         f"{_e(e['name'])}' src='{curves}'><figcaption class='muted'>Learning curves of the "
                         "best cell, one colour per seed.</figcaption></figure>")
        parts.append("</section>")
    parts.append(_ABOUT)
    parts.append("</main></body></html>")
    return "".join(parts)


_ABOUT = """<section class='card' id='about'><h2>How to read the measures</h2><dl>
<dt>Verdict and ridge slope</dt><dd>The ridge is the best log10 wd as a function of log10 lr, from a
quadratic surface fitted to the cells near the optimum (diverged and chance-level cells left out);
its slope has a 95% Fieller interval. Separable: the whole interval lies inside &plusmn;0.5.
Coupled: it excludes 0 and the slope is beyond &plusmn;0.5. Otherwise inconclusive, with the seeds
that would likely decide it. No wd effect: wd moves the metric less than seed noise near the
optimum. The ranking follows the verdicts.</dd>
<dt>Interaction share and separability</dt><dd>Two-way ANOVA of the grid on log10 axes:
SS<sub>interaction</sub> / (SS<sub>lr</sub> + SS<sub>wd</sub> + SS<sub>interaction</sub>). 0 exactly
when the metric is f(lr) + g(wd): the best wd is the same at every lr. Diverged cells and cells
worse than chance count as chance. Separability = 1 &minus; interaction share.</dd>
<dt>Best-wd slope</dt><dd>For each near-optimal lr row, the best log10 wd (refined by a parabola);
their least-squares slope against log10 lr. 0: keep wd when lr changes; &minus;1: only the product
lr&middot;wd matters (halve wd when you double lr). Not reported when wd moves the metric less than
seed noise.</dd>
<dt>Basin tilt</dt><dd>Direction of the ten best cells (circled), from their principal axis in
decades: 0 axis-aligned, 45 diagonal.</dd>
<dt>One-at-a-time regret</dt><dd>Tune lr at the default wd, then wd at that lr: how much worse
than the grid's best that ends. 0 means one-at-a-time tuning is enough.</dd>
<dt>Intervals</dt><dd>95% bootstrap over seeds. A &lsquo;?&rsquo; marks an interval too wide to rank on.</dd>
</dl></section>"""
