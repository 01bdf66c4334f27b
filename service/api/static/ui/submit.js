// The submit page (/ui/submit): a spec editor (JSON or YAML) checked as you type.
//
// Half a second after the last keystroke the spec is parsed here (JSON.parse, or js-yaml's
// safe schema) and sent to POST /studies?dry_run=true, which answers the expanded grid, the trial
// and trial-epoch counts and an estimated run time, or the same 422 errors a real submission
// would get. Each error is shown next to the line of the field it names (its path, e.g.
// optimizers[0].lr.min, is looked up in the text). Submitting posts the same body to
// POST /studies and opens the new study's page.
(() => {
  "use strict";

  const { $, el, api, num, handle } = window.DL;
  const DEBOUNCE_MS = 500;
  const EXAMPLE = {
    name: "adamw vs adam on digits",
    task: "digits_mlp",
    epochs: 2,
    optimizers: [
      { name: "adamw", lr: { min: 0.001, max: 0.01, num: 2 }, wd: { min: 0.0001, max: 0.01, num: 2 } },
      { name: "adam", lr: { min: 0.001, max: 0.01, num: 2 }, wd: { min: 0.0001, max: 0.01, num: 2 } },
    ],
    seeds: [0, 1],
  };

  let seq = 0;
  let timer = null;
  let body = null; // the last spec the server accepted

  // --- where a field is: path -> line ------------------------------------------------------

  function segments(field) {
    const out = [];
    for (const part of String(field).split(".")) {
      const m = /^([^[\]]*)((?:\[\d+\])*)$/.exec(part);
      if (!m) { out.push(part); continue; }
      if (m[1]) out.push(m[1]);
      for (const idx of m[2].matchAll(/\[(\d+)\]/g)) out.push(Number(idx[1]));
    }
    return out;
  }

  // A JSON text's value paths ("optimizers/0/lr/min") and the line each starts on.
  function jsonLines(text) {
    const lines = {};
    let i = 0;
    let line = 1;
    const ws = () => {
      while (i < text.length && /\s/.test(text[i])) {
        if (text[i] === "\n") line++;
        i++;
      }
    };
    const str = () => {
      let s = "";
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === "\\") { s += text[i + 1]; i += 2; } else { s += text[i]; i++; }
      }
      i++;
      return s;
    };
    const value = (path, at) => {
      ws();
      lines[path.join("/")] = at || line;
      if (text[i] === "{") {
        i++;
        ws();
        while (i < text.length && text[i] !== "}") {
          ws();
          const keyLine = line;
          const k = str();
          ws();
          i++; // :
          value([...path, k], keyLine);
          ws();
          if (text[i] === ",") i++;
          ws();
        }
        i++;
      } else if (text[i] === "[") {
        i++;
        let n = 0;
        ws();
        while (i < text.length && text[i] !== "]") {
          ws();
          value([...path, n++]);
          ws();
          if (text[i] === ",") i++;
          ws();
        }
        i++;
      } else if (text[i] === '"') {
        str();
      } else {
        while (i < text.length && !/[,}\]\s]/.test(text[i])) i++;
      }
    };
    try { value([]); } catch (_) { /* a malformed text: what was found so far */ }
    return lines;
  }

  // The line of a path in a YAML text: each key is the next "key:" line below the last one found,
  // each index the n-th "- " item below it.
  function yamlLine(text, segs) {
    const rows = text.split("\n");
    let at = 0;
    let found = 1;
    for (const s of segs) {
      let hit = -1;
      if (typeof s === "number") {
        let seen = -1;
        let indent = null;
        for (let r = at; r < rows.length; r++) {
          const m = /^(\s*)- /.exec(rows[r]);
          if (!m) continue;
          if (indent === null) indent = m[1].length;
          if (m[1].length === indent && ++seen === s) { hit = r; break; }
        }
      } else {
        const re = new RegExp("^\\s*(- )?[\"']?" + s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "[\"']?\\s*:");
        for (let r = at; r < rows.length; r++) if (re.test(rows[r])) { hit = r; break; }
      }
      if (hit < 0) break;
      at = hit + (typeof s === "number" ? 0 : 1);
      found = hit + 1;
    }
    return found;
  }

  function lineOf(text, format, field) {
    const segs = segments(field).filter((s) => s !== "body");
    if (format === "yaml") return yamlLine(text, segs);
    const lines = jsonLines(text);
    for (let k = segs.length; k >= 0; k--) {
      const hit = lines[segs.slice(0, k).join("/")];
      if (hit) return hit;
    }
    return 1;
  }

  // --- the editor --------------------------------------------------------------------------

  function gutter(marks) {
    const n = $("spec").value.split("\n").length;
    const kids = [];
    for (let k = 1; k <= n; k++) {
      kids.push(el("span", { class: marks && marks.has(k) ? "bad" : null, "data-line": k }, String(k)), "\n");
    }
    $("gutter").replaceChildren(...kids);
    $("gutter").scrollTop = $("spec").scrollTop;
  }

  function parse(text, format) {
    if (format === "yaml") return window.jsyaml.load(text, { schema: window.jsyaml.JSON_SCHEMA });
    return JSON.parse(text);
  }

  function showErrors(errors, text, format) {
    const marks = new Set();
    $("errors").replaceChildren(...errors.map((e) => {
      const line = e.line || lineOf(text, format, e.field);
      marks.add(line);
      return el("li", { "data-line": line, "data-field": e.field },
        el("span", { class: "line" }, "line " + line), " ", el("code", {}, e.field), " ", e.message);
    }));
    gutter(marks);
    $("check").textContent = errors.length ? errors.length + " problem" + (errors.length > 1 ? "s" : "") : "";
    $("check").className = errors.length ? "check bad" : "check";
  }

  function plan(d) {
    const est = d.estimated_seconds === null || d.estimated_seconds === undefined
      ? "no run time measured yet for this task"
      : "about " + duration(d.estimated_seconds) + (d.estimate && d.estimate.basis ? " (" + d.estimate.basis + ")" : "");
    $("plan").replaceChildren(
      el("p", {}, el("b", {}, d.trials_total + " trials"), ", " + d.trial_epochs_total + " trial-epochs, " + est + "."),
      el("table", {}, el("thead", {}, el("tr", {}, ...["optimizer", "lr", "wd", "seeds", "trials"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...(d.optimizers || []).map((o) => el("tr", {},
          el("td", {}, o.name), el("td", {}, axisText(o.lr)), el("td", {}, axisText(o.wd)),
          el("td", {}, Array.isArray(o.seeds) ? o.seeds.join(", ") : JSON.stringify(o.seeds)), el("td", {}, String(o.trials)))))));
  }

  function axisText(a) {
    if (a === null || a === undefined) return "auto (a pilot places it)";
    if (!Array.isArray(a)) return JSON.stringify(a);
    if (a.length <= 4) return a.map((v) => num(v, 3)).join(", ");
    return a.length + " values, " + num(a[0], 3) + " … " + num(a[a.length - 1], 3);
  }

  function duration(s) {
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  async function check() {
    const mine = ++seq;
    const text = $("spec").value;
    const format = $("format").value;
    body = null;
    $("submit").disabled = true;
    let spec;
    try {
      spec = parse(text, format);
    } catch (e) {
      const line = e.mark ? e.mark.line + 1 : jsonErrorLine(text, e);
      showErrors([{ field: "body", message: (format === "yaml" ? "invalid YAML: " : "invalid JSON: ") + e.message.split("\n")[0], line }], text, format);
      $("plan").replaceChildren();
      return;
    }
    $("check").textContent = "checking…";
    $("check").className = "check";
    try {
      const d = await api("/studies?dry_run=true", { method: "POST", json: spec });
      if (mine !== seq) return;
      showErrors([], text, format);
      $("check").textContent = "✓ valid";
      $("check").className = "check ok";
      plan(d);
      body = spec;
      $("submit").disabled = false;
    } catch (e) {
      if (mine !== seq) return;
      if (e.status === 422 && e.body && Array.isArray(e.body.errors)) {
        showErrors(e.body.errors, text, format);
        $("plan").replaceChildren();
      } else if (!handle(e)) {
        $("check").textContent = e.message;
      }
    }
  }

  function jsonErrorLine(text, e) {
    const m = /position (\d+)/.exec(e.message);
    return m ? text.slice(0, Number(m[1])).split("\n").length : 1;
  }

  // An edit: the spec last checked is no longer the text, so nothing can be submitted until the
  // new text is checked (a click within the debounce would otherwise post the previous spec),
  // and a check still in flight for the old text no longer counts (seq).
  function later() {
    clearTimeout(timer);
    seq++;
    body = null;
    $("submit").disabled = true;
    $("check").textContent = "checking…";
    $("check").className = "check";
    gutter();
    timer = setTimeout(check, DEBOUNCE_MS);
  }

  function setText(spec) {
    $("spec").value = $("format").value === "yaml" ? window.jsyaml.dump(spec) : JSON.stringify(spec, null, 2);
    later();
  }

  async function submit() {
    if (!body) return;
    $("submit").disabled = true;
    $("submit-error").textContent = "";
    try {
      const made = await api("/studies", { method: "POST", json: body });
      location.assign("/ui/studies/" + encodeURIComponent(made.id));
    } catch (e) {
      if (handle(e)) return;
      if (e.status === 422 && e.body && Array.isArray(e.body.errors)) showErrors(e.body.errors, $("spec").value, $("format").value);
      $("submit-error").textContent = e.message;
      $("submit").disabled = false;
    }
  }

  // --- the catalogue -----------------------------------------------------------------------

  let optimizers = [];

  function drawOptimizers() {
    const q = $("opt-filter").value.trim().toLowerCase();
    const shown = optimizers.filter((o) => !q || (o.name + " " + o.title + " " + o.base + " " + o.convention).toLowerCase().includes(q));
    $("optimizers-list").replaceChildren(...shown.slice(0, 60).flatMap((o) => [
      el("dt", {}, el("button", { type: "button", class: "link", "data-optimizer": o.name, title: "add to the spec" }, o.name)),
      el("dd", {}, o.title + " · " + o.decay_convention + " · default lr " + num(o.default_grid.lr.min) + "–" +
        num(o.default_grid.lr.max) + ", wd " + num(o.default_grid.wd.min) + "–" + num(o.default_grid.wd.max)),
    ]));
  }

  async function main() {
    const [tasks, opts] = await Promise.all([api("/tasks"), api("/optimizers")]);
    $("tasks").replaceChildren(...tasks.data.flatMap((t) => [
      el("dt", {}, el("button", { type: "button", class: "link", "data-task": t.name, title: "use this task" }, t.name)),
      el("dd", {}, t.description + " · " + t.epochs + " epochs, batch " + t.batch_size),
    ]));
    optimizers = opts.data;
    drawOptimizers();
    if (!$("spec").value.trim()) setText(EXAMPLE);
  }

  $("spec").addEventListener("input", later);
  $("spec").addEventListener("scroll", () => { $("gutter").scrollTop = $("spec").scrollTop; });
  $("format").addEventListener("change", () => {
    let spec = null;
    const other = $("format").value === "yaml" ? "json" : "yaml";
    try { spec = parse($("spec").value, other); } catch (_) { /* keep the text as it is */ }
    if (spec !== null && typeof spec === "object") setText(spec);
    else later();
  });
  $("example").addEventListener("click", () => setText(EXAMPLE));
  // The catalogue writes into the spec: a task replaces the task, an optimizer is appended (with
  // its default grids). Only when the text parses: a half-typed spec is left alone.
  document.querySelector(".catalogue").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-task], button[data-optimizer]");
    if (!b) return;
    let spec;
    try { spec = parse($("spec").value, $("format").value); } catch (_) { spec = null; }
    if (!spec || typeof spec !== "object") {
      $("check").textContent = "fix the spec first: the catalogue adds to a spec that parses";
      return;
    }
    if (b.dataset.task) spec.task = b.dataset.task;
    else spec.optimizers = [...(Array.isArray(spec.optimizers) ? spec.optimizers : []), { name: b.dataset.optimizer }];
    setText(spec);
  });
  $("submit").addEventListener("click", submit);
  $("opt-filter").addEventListener("input", drawOptimizers);
  $("errors").addEventListener("click", (ev) => {
    const li = ev.target.closest("li[data-line]");
    if (!li) return;
    const rows = $("spec").value.split("\n");
    const start = rows.slice(0, Number(li.dataset.line) - 1).join("\n").length + (li.dataset.line > 1 ? 1 : 0);
    $("spec").focus();
    $("spec").setSelectionRange(start, start + rows[Number(li.dataset.line) - 1].length);
  });

  window.DL.start(main);
})();
