// The compare page (/ui/compare?ids=A,B,...): finished studies side by side.
//
// GET /compare gives, per optimizer, each study's measures with their intervals and each later
// study's difference from the first with a bootstrap interval of the difference (service/compare.py);
// the heat maps come from each study's stored report and share one colour scale per optimizer, so
// the same colour means the same value in every study.
(() => {
  "use strict";

  const { $, el, api, num, ci } = window.DL;
  const { heatmap } = window.DL.plots;
  const LABELS = {
    best_value: "best value", interaction_share: "interaction share", interaction_share_rank: "interaction share (rank)",
    optimal_wd_slope: "optimal-wd slope", basin_tilt_deg: "basin tilt (deg)", coordinate_regret: "coordinate regret",
  };

  async function main() {
    const ids = (window.DL.query().get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
    if (ids.length < 2) {
      $("compare-what").textContent = "Pick two or more finished studies on the studies page (the boxes before their names), then 'compare'.";
      return;
    }
    const [cmp, ...reports] = await Promise.all([
      api("/compare?ids=" + ids.map(encodeURIComponent).join(",")),
      ...ids.map((id) => api("/studies/" + encodeURIComponent(id) + "/report")),
    ]);
    const names = cmp.studies.map((s) => s.name || s.study_id);
    $("compare-what").replaceChildren("Comparing ", ...cmp.studies.flatMap((s, k) => [
      k ? (k === cmp.studies.length - 1 ? " and " : ", ") : "",
      el("a", { href: "/ui/studies/" + encodeURIComponent(s.study_id) }, s.name || s.study_id),
      " (" + s.task + ", " + s.epochs + " epochs)",
    ]), " on " + cmp.metric + ". Differences are each study minus the first.");
    $("method").textContent = cmp.method;
    $("warnings").replaceChildren(...cmp.warnings.map((w) => el("li", {}, w)));
    $("optimizers").replaceChildren(...cmp.optimizers.map((o) => section(o, cmp, names, reports)));
    window.DL.notice("");
  }

  function section(o, cmp, names, reports) {
    const head = el("tr", {}, el("th", {}, "measure"), ...names.map((n) => el("th", {}, n)),
      ...o.differences.map((d, k) => el("th", {}, "difference " + names[k + 1] + " − " + names[0])));
    const rows = cmp.measures.map((m) => el("tr", {},
      el("td", {}, LABELS[m] || m),
      ...o.studies.map((s) => el("td", {}, s.present ? num(s.measures[m].value) + " " + ci(s.measures[m].ci) : "–")),
      ...o.differences.map((d) => {
        const x = d.measures && d.measures[m];
        if (!x) return el("td", {}, "–");
        return el("td", { class: x.excludes_zero ? "diff sig" : "diff", title: x.excludes_zero
          ? "the 95% interval of the difference excludes 0" : "the interval includes 0 (or there is none)" },
        num(x.diff) + " " + ci(x.ci));
      })));
    const entries = reports.map((r) => (r.optimizers || []).find((e) => e.name === o.name) || null);
    const values = entries.flatMap((e) => (e && e.grid && e.grid.value ? e.grid.value.flat() : []))
      .filter((v) => v !== null && Number.isFinite(v));
    // No finite value anywhere (every cell diverged): NaN, as the study page has it, not ±Infinity.
    const lo = values.length ? values.reduce((a, b) => Math.min(a, b)) : NaN;
    const hi = values.length ? values.reduce((a, b) => Math.max(a, b)) : NaN;
    const maps = el("div", { class: "maps" }, ...entries.map((e, k) => {
      if (!e || !e.grid || !e.grid.lr.length) return el("p", { class: "legend" }, names[k] + ": no grid");
      let mark = null;
      if (e.best && e.best.lr) {
        const i = e.grid.lr.findIndex((v) => Math.abs(Math.log(v / e.best.lr)) < 1e-9);
        const j = e.grid.wd.findIndex((v) => Math.abs(Math.log(v / e.best.wd)) < 1e-9);
        if (i >= 0 && j >= 0) mark = [i, j];
      }
      return heatmap(e.grid.value, e.grid.lr, e.grid.wd, { min: lo, max: hi, label: names[k] + " (" + e.decision.verdict + ")",
        diverged: e.grid.diverged, mark,
        onHover: (i, j, ev) => tip(names[k], e, i, j, ev), onLeave: () => { $("tip").hidden = true; } });
    }));
    return el("section", { class: "card optimizer", "data-optimizer": o.name },
      el("h2", {}, o.name),
      el("ul", { class: "warnings" }, ...o.warnings.map((w) => el("li", {}, w))),
      el("table", { class: "measures" }, el("thead", {}, head), el("tbody", {}, ...rows)),
      el("p", { class: "legend" }, "Heat maps on one colour scale (" + num(lo) + " to " + num(hi) + "); the outlined cell is each study's best."),
      maps);
  }

  function tip(name, e, i, j, ev) {
    const t = $("tip");
    const v = e.grid.value[i][j];
    t.replaceChildren(el("b", {}, name), el("br"), "lr " + num(e.grid.lr[i]) + ", wd " + num(e.grid.wd[j]), el("br"),
      (e.grid.diverged && e.grid.diverged[i][j] ? "diverged" : "mean " + num(v, 4)) +
      " over " + (e.grid.seeds ? e.grid.seeds[i][j] : "?") + " seed(s)");
    t.hidden = false;
    t.style.left = ev.pageX + 14 + "px";
    t.style.top = ev.pageY + 14 + "px";
  }

  window.DL.start(main);
})();
