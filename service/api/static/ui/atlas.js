// The atlas page (/ui/atlas?task=&base=&convention=&owner=): GET /atlas, one row per task and
// optimizer across every finished study, filtered on the server; the filters live in the page's
// query string, so a filtered atlas is a link to share.
(() => {
  "use strict";

  const { $, el, api, num, ci } = window.DL;
  const FILTERS = ["task", "base", "convention", "owner"];
  let seq = 0;

  function chosen() {
    const q = window.DL.query();
    return Object.fromEntries(FILTERS.map((f) => [f, q.get(f) || ""]));
  }

  function fillOptions(all, now) {
    for (const f of FILTERS) {
      const values = new Set();
      for (const r of all) {
        if (f === "owner") (r.owners || []).forEach((o) => values.add(o));
        else if (r[f]) values.add(r[f]);
      }
      if (now[f]) values.add(now[f]);
      const select = $("f-" + f);
      select.replaceChildren(el("option", { value: "" }, "any"),
        ...[...values].sort().map((v) => el("option", { value: v }, v)));
      select.value = now[f];
    }
  }

  function row(r) {
    const best = r.best || {};
    return el("tr", { "data-task": r.task, "data-optimizer": r.optimizer },
      el("td", {}, r.task), el("td", {}, el("code", {}, r.optimizer)),
      el("td", {}, el("span", { class: "verdict " + r.verdict }, r.verdict)),
      el("td", {}, num(r.ridge_slope) + " " + ci(r.ridge_slope_ci)),
      el("td", {}, num(best.lr)), el("td", {}, num(best.wd)),
      el("td", {}, num(best.value) + (r.metric ? " " + r.metric : "")),
      el("td", {}, num(r.best_tau_epochs)),
      el("td", {}, r.seeds === null || r.seeds === undefined ? "–" : String(r.seeds)),
      el("td", { class: "links" }, ...(r.studies || []).flatMap((id, k) => [
        k ? " · " : "", el("a", { href: "/ui/studies/" + encodeURIComponent(id), title: id + (k ? "" : " (newest: its numbers are shown)") },
          id.slice(0, 8))]),
      r.n_studies > 1 ? el("div", { class: "legend" }, verdicts(r.verdicts)) : null));
  }

  function verdicts(v) {
    return Object.entries(v || {}).map(([k, n]) => n + " " + k).join(", ");
  }

  async function load(first) {
    const mine = ++seq;
    const now = chosen();
    const q = new URLSearchParams(Object.entries(now).filter(([, v]) => v));
    // The filters' options come from the whole atlas: on the first load one more request, only
    // when a filter is set (without one, the page's own answer is the whole atlas).
    const calls = [api("/atlas" + (q.toString() ? "?" + q : ""))];
    if (first && q.toString()) calls.push(api("/atlas"));
    const [page, other] = await Promise.all(calls);
    const all = first ? other || page : null;
    if (mine !== seq) return;
    if (all) fillOptions(all.data, now);
    $("atlas-rows").replaceChildren(...(page.data.length ? page.data.map(row)
      : [el("tr", {}, el("td", { class: "empty", colspan: 10 }, "No finished study matches these filters yet."))]));
    const pending = (page.pending || []).length;
    window.DL.notice(page.count + " row" + (page.count === 1 ? "" : "s") +
      (pending ? " · " + pending + " finished stud" + (pending === 1 ? "y" : "ies") + " without a report yet" : ""));
  }

  $("atlas-filters").addEventListener("change", () => {
    const q = new URLSearchParams();
    for (const f of FILTERS) if ($("f-" + f).value) q.set(f, $("f-" + f).value);
    history.replaceState(null, "", "/ui/atlas" + (q.toString() ? "?" + q : ""));
    load(false).catch(window.DL.handle);
  });
  $("atlas-filters").addEventListener("submit", (ev) => ev.preventDefault());

  window.DL.start(() => load(true));
})();
