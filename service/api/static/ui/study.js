// The study page (/ui/studies/ID): fills in live while a worker runs the study.
//
// Every few seconds it asks GET /studies/ID (one row and a count: cheap). Only when the progress
// moved (an epoch landed, a trial finished or failed, the status changed) does it fetch the report, which the
// server builds at most once per change of the study and shares between viewers
// (service/api/report_cache.py): a room of viewers costs one report build per finished epoch, not
// one per viewer. Everything drawn comes from that report: per cell the mean and standard error
// over the finished seeds, each seed's value and trial (report.grid), the measures and verdict; a
// click fetches that cell's learning curves, one per seed, those of running trials so far too.
(() => {
  "use strict";

  const { $, el, api, num, ci, meanSe, notice, handle } = window.DL;
  const { heatmap, lines } = window.DL.plots;
  const ID = document.body.dataset.studyId;
  const BASE = "/studies/" + encodeURIComponent(ID);

  let key = null;
  let me = null; // GET /me: who this tab is, for the owner's buttons
  let timer = null;
  let state = { study: null, report: null };
  const selected = {}; // optimizer -> [i, j] of the cell whose curves are shown

  // --- the loop ------------------------------------------------------------------------------

  // One loop: a poll started while another is in flight (the tab shown again, a button) only
  // asks for one more round when that one ends, never a second timer.
  let busy = false;
  let again = false;

  async function poll() {
    clearTimeout(timer);
    timer = null;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      await round();
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      poll();
    }
  }

  async function round() {
    try {
      if (me === null) me = await api("/me");
      const study = await api(BASE);
      const p = study.progress;
      const now = [study.status, p.trials_done, p.trials_failed, p.trials_total, p.epochs_recorded].join("/");
      state.study = study;
      head(study);
      if (now !== key) {
        const report = await api(BASE + "/report");
        // The server may answer a report built a moment before the last trial landed (it
        // looks at a study at most every few seconds): ask again next time until it caught up.
        const seen = (report.optimizers || []).reduce((n, e) => n + ((e.trials && e.trials.done) || 0), 0);
        key = seen >= p.trials_done && report.status === study.status ? now : null;
        if (JSON.stringify(report) !== JSON.stringify(state.report)) {
          state.report = report;
          draw();
        }
      }
      const live = study.status === "queued" || study.status === "running";
      notice("updated " + new Date().toLocaleTimeString() + (live ? " · refreshes every " + window.DL.pollMs / 1000 + " s" : ""));
      if (live) schedule(window.DL.pollMs);
    } catch (e) {
      if (handle(e)) return;
      schedule(window.DL.pollMs * 2);
    }
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(tick, ms);
  }

  function tick() {
    if (document.hidden) schedule(window.DL.pollMs);
    else poll();
  }

  // --- the head: name, status, progress, buttons ----------------------------------------------

  function head(s) {
    $("title").textContent = s.name;
    document.title = "Decouple Lab: " + s.name;
    const spec = s.spec || {};
    const facts = [
      ["status", el("span", { class: "status " + s.status, id: "status" }, s.status)],
      ["owner", s.owner], ["task", String(spec.task || "")], ["metric", String(spec.metric || "val_error")],
      ["epochs", String(spec.epochs || "")],
      ["seeds", Array.isArray(spec.seeds) ? spec.seeds.join(", ") : JSON.stringify(spec.seeds)],
    ];
    // As `decouple status` prints them: each installed plugin the study names, and why a queued
    // study waits (no worker with those plugins has claimed it).
    for (const key of Object.keys(s.plugins || {}).sort()) {
      const dist = s.plugins[key];
      facts.push(["plugin", key.replace(":", " ") + " from " + dist.distribution + " " + dist.version]);
    }
    if (s.status === "queued" && s.waiting_reason) facts.push(["waiting", s.waiting_reason]);
    $("facts").replaceChildren(...facts.map(([k, v]) => el("span", { class: "fact" }, el("b", {}, k + " "), v)));
    const p = s.progress;
    $("bar-ok").style.width = (100 * p.trials_done / Math.max(p.trials_total, 1)).toFixed(1) + "%";
    $("bar-bad").style.width = (100 * p.trials_failed / Math.max(p.trials_total, 1)).toFixed(1) + "%";
    $("progress-text").textContent = p.trials_done + "/" + p.trials_total + " trials done" +
      (p.trials_failed ? " · " + p.trials_failed + " failed" : "");
    const mine = me !== null && (me.admin || me.name === s.owner); // the server checks again (403)
    $("cancel").hidden = !mine || !(s.status === "queued" || s.status === "running");
    $("extend").hidden = !mine || s.status !== "done";
  }

  // --- cells from the report's grid -----------------------------------------------------------

  function index(axisValues, v) {
    return axisValues.findIndex((a) => Math.abs(Math.log(a) - Math.log(v)) < 1e-9);
  }

  // Per optimizer: the axes, and per cell the mean and s.e. over finished seeds, each seed's value
  // and trial (for its curve), and how many seeds diverged there (report.grid, docs/api.md).
  function cells(entry) {
    const g = entry && entry.grid && entry.grid.lr && entry.grid.lr.length ? entry.grid : null;
    if (!g) return null;
    const seeds = g.seed_list || [];
    const grid = g.lr.map((_, i) => g.wd.map((__, j) => {
      const list = [];
      const running = [];
      seeds.forEach((seed, s) => {
        const id = g.trial_ids && g.trial_ids[s] ? g.trial_ids[s][i][j] : null;
        const run = g.running_ids && g.running_ids[s] ? g.running_ids[s][i][j] : null;
        if (run !== null && run !== undefined) running.push({ seed, id: run });
        if (id === null || id === undefined) return; // not finished yet
        const v = g.per_seed[s][i][j];
        list.push({ seed, id, value: v === null ? Infinity : v }); // null for a finished trial: diverged
      });
      return { seeds: list, running, n: g.seeds ? g.seeds[i][j] : list.length, mean: g.value[i][j],
        se: g.se ? g.se[i][j] : null };
    }));
    return { lr: g.lr, wd: g.wd, grid, mean: g.value, se: g.se || g.value.map((r) => r.map(() => null)),
      diverged: g.diverged || g.value.map((r) => r.map(() => 0)), pending: seeds.length };
  }

  function range(matrices) {
    const vs = matrices.flat(2).filter((v) => v !== null && Number.isFinite(v));
    return vs.length ? [Math.min(...vs), Math.max(...vs)] : [NaN, NaN];
  }

  // --- drawing -----------------------------------------------------------------------------

  function draw() {
    const report = state.report || { optimizers: [] };
    const metric = report.metric || (state.study.spec || {}).metric || "val_error";
    const specOpts = (state.study.spec || {}).optimizers || [];
    const entries = Object.fromEntries((report.optimizers || []).map((e) => [e.name, e]));
    const names = specOpts.map((o) => o.name);
    $("warnings").replaceChildren(...(report.warnings || []).map((w) => el("li", {}, w)));
    const ranking = report.ranking || [];
    names.sort((a, b) => (ranking.indexOf(a) + 1 || 99) - (ranking.indexOf(b) + 1 || 99));
    $("optimizers").replaceChildren(...names.map((name) => section(name, entries[name], metric)));
  }

  function section(name, entry, metric) {
    const c = cells(entry);
    if (!c) {
      const why = entry && entry.placement && entry.placement.lr === "auto" ? "its axes are placed by a pilot run first"
        : "no trial has finished yet";
      return el("section", { class: "card optimizer", "data-optimizer": name },
        el("h2", {}, name, " ", el("span", { class: "verdict pending" }, "pending")),
        el("p", { class: "reason" }, "No grid yet: " + why + "."));
    }
    const [lo, hi] = range([c.mean]);
    const [slo, shi] = range([c.se]);
    const dec = (entry && entry.decision) || {};
    const best = entry && entry.best;
    let mark = null;
    if (best && best.lr && best.wd) {
      const bi = index(c.lr, best.lr);
      const bj = index(c.wd, best.wd);
      if (bi >= 0 && bj >= 0) mark = [bi, bj];
    }
    const hover = (i, j, ev) => tip(name, c, i, j, ev, metric);
    const click = (i, j) => {
      selected[name] = [i, j];
      curves(name, c, i, j, metric, sec.querySelector(".curves"));
    };
    const maps = el("div", { class: "maps" },
      heatmap(c.mean, c.lr, c.wd, { min: lo, max: hi, label: "mean " + metric + " over seeds", diverged: c.diverged,
        onHover: hover, onLeave: untip, onClick: click, mark }),
      heatmap(c.se, c.lr, c.wd, { min: slo, max: shi, label: "standard error of the mean", onHover: hover,
        onLeave: untip, onClick: click }));
    const slices = el("div", { class: "maps" },
      lines([{ name: "best over wd", points: c.lr.map((x, i) => bestOf(c, i, null)) .map((b, i) => [c.lr[i], b.v, b.se]) }],
        { logX: true, xLabel: "learning rate", title: "best " + metric + " at each lr", width: 300, height: 200 }),
      lines([{ name: "best over lr", points: c.wd.map((x, j) => bestOf(c, null, j)).map((b, j) => [c.wd[j], b.v, b.se]) }],
        { logX: true, xLabel: "weight decay", title: "best " + metric + " at each wd", width: 300, height: 200 }));
    const sec = el("section", { class: "card optimizer", "data-optimizer": name },
      el("h2", {}, name, " ", el("span", { class: "verdict " + (dec.verdict || "pending") }, dec.verdict || "pending")),
      el("p", { class: "reason" }, (entry && entry.title ? entry.title + ". " : "") + (dec.reason || "No finished trials yet.")),
      el("div", { class: "opt-body" }, measures(entry, metric), el("div", {}, maps, slices)),
      entry && entry.grid && entry.grid.lr && entry.grid.lr.length ? figures(name) : null,
      el("div", { class: "curves" }, el("p", { class: "legend" }, "Click a cell for its learning curves.")));
    if (selected[name]) {
      const [i, j] = selected[name];
      if (c.grid[i] && c.grid[i][j]) curves(name, c, i, j, metric, sec.querySelector(".curves"));
    }
    return sec;
  }

  // The report's own figures of this optimizer, as files (drawn once per report on the server).
  function figures(name) {
    const base = BASE + "/figures/" + encodeURIComponent(name) + "/";
    const links = [];
    for (const [fig, label] of [["heatmap", "heat map"], ["curves", "best cell's curves"]]) {
      for (const fmt of ["png", "svg"]) {
        if (links.length) links.push(" · ");
        links.push(window.DL.downloadLink(base + fig + "." + fmt + "?download=1", label + " " + fmt.toUpperCase()));
      }
    }
    return el("p", { class: "exports" }, "figures: ", ...links);
  }

  function bestOf(c, i, j) {
    let v = null;
    let se = null;
    c.lr.forEach((_, a) => c.wd.forEach((__, b) => {
      if ((i !== null && a !== i) || (j !== null && b !== j)) return;
      const m = c.mean[a][b];
      if (m !== null && (v === null || m < v)) {
        v = m;
        se = c.se[a][b];
      }
    }));
    return { v: v === null ? NaN : v, se: se === null ? NaN : se };
  }

  function measures(e, metric) {
    if (!e || !e.decision) return el("p", { class: "legend" }, "Measures appear once trials are done.");
    const d = e.decision;
    const c = e.ci || {};
    const tau = e.parametrizations && e.parametrizations.best_tau;
    const rows = [
      ["verdict", d.verdict, d.seeds_to_decide ? "about " + d.seeds_to_decide + " seeds would decide it" : ""],
      ["ridge slope (d log wd* / d log lr)", num(d.ridge_slope), ci(d.ridge_slope_ci)],
      ["interaction share", num(e.interaction_share), ci(c.interaction_share)],
      ["separability", num(e.separability), ""],
      ["optimal-wd slope", num(e.optimal_wd_slope), ci(c.optimal_wd_slope)],
      ["basin tilt (deg)", num(e.basin_tilt_deg), ci(c.basin_tilt_deg)],
      ["coordinate regret", num(e.coordinate_regret), ci(c.coordinate_regret)],
      ["best " + metric, e.best ? num(e.best.value) : "–", e.best ? "at lr " + num(e.best.lr) + ", wd " + num(e.best.wd) : ""],
    ];
    if (tau !== null && tau !== undefined) rows.push(["best τ (epochs)", num(tau), ""]);
    return el("table", { class: "measures" },
      el("thead", {}, el("tr", {}, el("th", {}, "measure"), el("th", {}, "value"), el("th", {}, "95% interval / note"))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((v) => el("td", {}, String(v === undefined || v === null ? "–" : v)))))));
  }

  // --- hover and click ----------------------------------------------------------------------

  function tip(name, c, i, j, ev, metric) {
    const cell = c.grid[i][j];
    const t = $("tip");
    const parts = cell.seeds.map((s) => "seed " + s.seed + ": " + (Number.isFinite(s.value) ? num(s.value, 4) : "diverged"))
      .concat(cell.running.map((s) => "seed " + s.seed + ": running (partial; click for its curve so far)"));
    const seeds = parts.length ? parts.join(" · ") : "no seed finished here yet";
    t.replaceChildren(
      el("b", {}, name + "  lr " + num(c.lr[i], 3) + "  wd " + num(c.wd[j], 3)), el("br"),
      seeds, el("br"),
      c.diverged[i][j] ? "diverged in " + c.diverged[i][j] + " seed(s)"
        : metric + " mean " + num(cell.mean, 4) + " ± " + num(cell.se, 2) + " (s.e., n=" + cell.n + ")");
    t.hidden = false;
    t.style.left = Math.min(ev.pageX + 14, window.innerWidth + window.scrollX - 320) + "px";
    t.style.top = ev.pageY + 14 + "px";
  }

  function untip() {
    $("tip").hidden = true;
  }

  async function curves(name, c, i, j, metric, box) {
    const cell = c.grid[i][j];
    box.replaceChildren(el("p", { class: "legend" }, "lr " + num(c.lr[i]) + ", wd " + num(c.wd[j]) + ": loading curves…"));
    try {
      const done = cell.seeds.map((t) => ({ ...t, label: "seed " + t.seed }))
        .concat(cell.running.map((t) => ({ ...t, label: "seed " + t.seed + " (running)" })));
      const got = await Promise.all(done.map((t) => api(BASE + "/trials/" + t.id + "/curve")));
      const series = got.map((g, k) => ({ name: done[k].label,
        points: g.points.map((p) => [p.epoch, p[metric]]) })).filter((x) => x.points.length);
      box.replaceChildren(
        el("h3", {}, "learning curves at lr " + num(c.lr[i]) + ", wd " + num(c.wd[j])),
        series.length ? lines(series, { xLabel: "epoch", title: metric + " per epoch, one line per seed", width: 520, height: 220 })
          : el("p", { class: "legend" }, "No epoch of this cell has been recorded yet."));
    } catch (e) {
      handle(e);
    }
  }

  // --- buttons ------------------------------------------------------------------------------

  async function act(what, path, body) {
    try {
      await api(path, { method: "POST", json: body });
      notice(what + ": done");
      key = null;
      poll();
    } catch (e) {
      if (!handle(e)) notice(what + ": " + e.message, true);
    }
  }

  $("cancel").addEventListener("click", () => {
    if (window.confirm("Cancel this study? Trials already done are kept; the rest will not run.")) act("cancel", BASE + "/cancel");
  });
  $("extend").addEventListener("click", () => act("extend", BASE + "/extend", {}));
  $("exports").replaceChildren("exports: ",
    window.DL.downloadLink(BASE + "/trials?format=csv", "trials CSV"), " · ",
    window.DL.downloadLink(BASE + "/trials?format=parquet", "trials Parquet"), " · ",
    window.DL.downloadLink(BASE + "/report.html?download=1", "report (one HTML file, opens offline)"));
  $("report-link").setAttribute("href", BASE + "/report.html");
  $("json-link").setAttribute("href", BASE + "/report");
  window.DL.tokenLink($("report-link"));
  window.DL.tokenLink($("json-link"));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.study && ["queued", "running"].includes(state.study.status)) poll();
  });

  window.DL.start(poll);
})();
