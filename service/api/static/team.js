// The team page (GET /): every study, refreshed from GET /studies every few seconds.
//
// With DECOUPLE_AUTH=required the page asks for an API token once and keeps it in this tab's
// sessionStorage; every fetch sends it as "Authorization: Bearer". A browser cannot add that
// header to a plain navigation, so the report, JSON and CSV links are fetched with the header
// and handed to the browser as blob: URLs (a tab for the report, a download for the CSV): the
// token never appears in a URL, a log or the history, and the server needs no second way in.
//
// Everything a user typed (study names, owners) reaches the DOM through text nodes and
// setAttribute, never through innerHTML, so a name like <img src=x onerror=...> stays text; the
// page's Content-Security-Policy runs this script alone (by its hash) should that ever slip.
(() => {
  "use strict";

  const body = document.body;
  const AUTH = body.dataset.auth === "required";
  const PAGE_SIZE = Number(body.dataset.pageSize);
  const POLL_MS = Number(body.dataset.pollMs);
  const TOKEN_KEY = "decouple.token";
  const STATUSES = ["queued", "running", "done", "failed", "cancelled"];
  const $ = (id) => document.getElementById(id);

  let seq = 0; // a newer request makes the answers of older ones moot
  let timer = null;
  const owners = new Set();
  const picked = new Set(); // studies ticked for the compare view, kept across refreshes

  class AuthError extends Error {}

  // --- DOM helpers --------------------------------------------------------------------------

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    node.append(...kids); // strings become text nodes
    return node;
  }

  function notice(text, isError) {
    $("notice").textContent = text;
    $("notice").classList.toggle("error", Boolean(isError));
  }

  // --- filters live in the page's own query string: ?status=&owner=&offset= ------------------

  function filters() {
    const q = new URLSearchParams(location.search);
    return { status: q.get("status") || "", owner: q.get("owner") || "", offset: Number(q.get("offset") || 0) };
  }

  function pageUrl(f) {
    const q = new URLSearchParams();
    if (f.status) q.set("status", f.status);
    if (f.owner) q.set("owner", f.owner);
    if (f.offset) q.set("offset", String(f.offset));
    const s = q.toString();
    return s ? "/?" + s : "/";
  }

  function go(href) {
    history.pushState(null, "", href);
    syncInputs();
    load();
  }

  function syncInputs() {
    $("owner").value = filters().owner;
  }

  // --- the API ------------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function request(path) {
    const headers = AUTH ? { Authorization: "Bearer " + token() } : {};
    const r = await fetch(path, { headers, cache: "no-store" });
    if (r.ok) return r;
    let detail = r.status + " " + r.statusText;
    try {
      const answer = await r.json();
      if (answer && answer.detail) detail = String(answer.detail);
    } catch (_) { /* not JSON: keep the status line */ }
    if (r.status === 401) throw new AuthError(detail);
    throw new Error(detail);
  }

  async function load() {
    clearTimeout(timer);
    if (AUTH && !token()) {
      showLogin("");
      return;
    }
    const f = filters();
    const mine = ++seq;
    const q = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(f.offset) });
    if (f.status) q.set("status", f.status);
    if (f.owner) q.set("owner", f.owner);
    try {
      const page = await (await request("/studies?" + q)).json();
      if (mine !== seq) return;
      render(page, f);
      showTable();
      notice("updated " + new Date().toLocaleTimeString() + " · refreshes every " + POLL_MS / 1000 + " s");
    } catch (e) {
      if (mine !== seq) return;
      if (e instanceof AuthError) {
        forget();
        showLogin(e.message);
        return;
      }
      notice("could not refresh (" + e.message + "); trying again in " + POLL_MS / 1000 + " s", true);
    }
    timer = setTimeout(tick, POLL_MS);
  }

  function tick() {
    if (document.hidden) timer = setTimeout(tick, POLL_MS); // a background tab asks nothing
    else load();
  }

  // --- rendering (the same markup as service/api/routes/pages.py renders on the server) ------

  function age(iso) {
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 172800) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function utc(iso) {
    return new Date(iso).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function percent(n, total) {
    return (100 * n / Math.max(total, 1)).toFixed(1) + "%";
  }

  // What installed plugins a study needs, as pages.plugin_note writes it on the server:
  // distributions in the text, each plugin in the title.
  function pluginNote(plugins) {
    const keys = Object.keys(plugins || {}).sort();
    if (!keys.length) return null;
    const byDist = new Map();
    for (const key of keys) {
      const dist = plugins[key].distribution + " " + plugins[key].version;
      if (!byDist.has(dist)) byDist.set(dist, []);
      byDist.get(dist).push(key.replace(":", " "));
    }
    const dists = [...byDist.keys()].sort();
    return {
      text: "needs " + dists.join(", "),
      title: dists.map((dist) => byDist.get(dist).join(", ") + " from " + dist).join("; "),
    };
  }

  function row(s, f) {
    const base = "/studies/" + encodeURIComponent(s.id);
    const p = s.progress;
    const ok = el("span", { class: "ok" });
    const bad = el("span", { class: "bad" });
    ok.style.width = percent(p.trials_done, p.trials_total);
    bad.style.width = percent(p.trials_failed, p.trials_total);
    const progress = el("td", { class: "progress" },
      el("span", {
        class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": p.trials_total,
        "aria-valuenow": p.trials_done, title: p.trials_done + " done, " + p.trials_failed + " failed, of " + p.trials_total,
      }, ok, bad),
      el("span", { class: "count" }, p.trials_done + "/" + p.trials_total));
    if (p.trials_failed) progress.append(el("span", { class: "failed" }, " · " + p.trials_failed + " failed"));
    const status = el("td", {}, el("a", {
      class: "status " + s.status, href: pageUrl({ status: s.status, owner: f.owner }), "data-nav": true,
      title: "show only " + s.status + " studies",
    }, s.status));
    if (s.status === "queued" && s.waiting_reason) {
      status.append(el("small", { class: "waiting", title: s.waiting_reason }, s.waiting_reason));
    }
    const task = el("td", {}, String(s.spec.task || ""));
    const needs = pluginNote(s.plugins);
    if (needs) task.append(el("small", { class: "plugins", title: needs.title }, needs.text));
    return el("tr", { "data-id": s.id },
      el("td", { class: "name" }, el("input", {
        type: "checkbox", class: "pick", value: s.id, autocomplete: "off", "aria-label": "pick for compare", checked: picked.has(s.id),
      }), " ", el("a", { href: "/ui/studies/" + encodeURIComponent(s.id) }, s.name)),
      status,
      progress,
      el("td", {}, el("a", {
        class: "owner", href: pageUrl({ status: f.status, owner: s.owner }), "data-nav": true,
        title: "show only studies of " + s.owner,
      }, s.owner)),
      task,
      el("td", {}, el("time", { datetime: s.created_at, title: utc(s.created_at) }, age(s.created_at))),
      el("td", { class: "links" },
        el("a", { href: base + "/report.html", "data-open": "tab" }, "report"), " · ",
        el("a", { href: base + "/report", "data-open": "tab" }, "json"), " · ",
        el("a", { href: base + "/trials?format=csv", "data-open": "download" }, "csv")));
  }

  function emptyRow(f) {
    const text = f.status || f.owner || f.offset
      ? "No studies match these filters."
      : "No studies yet: submit one with decouple submit SPEC, or POST /studies.";
    return el("tr", {}, el("td", { class: "empty", colspan: 7 }, text));
  }

  function render(page, f) {
    $("count").textContent = page.count + (page.count === 1 ? " study" : " studies");
    const chips = [el("span", { class: "label" }, "status")];
    for (const s of ["", ...STATUSES]) {
      chips.push(el("a", {
        class: s === f.status ? "chip on" : "chip", href: pageUrl({ status: s, owner: f.owner }), "data-nav": true,
      }, s || "all"));
    }
    $("chips").replaceChildren(...chips);
    const rows = page.data.map((s) => row(s, f));
    $("rows").replaceChildren(...(rows.length ? rows : [emptyRow(f)]));
    for (const s of page.data) owners.add(s.owner);
    $("owners").replaceChildren(...[...owners].sort().map((o) => el("option", { value: o })));
    const pager = [];
    if (f.offset > 0) {
      pager.push(el("a", { href: pageUrl({ ...f, offset: Math.max(0, f.offset - PAGE_SIZE) }), "data-nav": true }, "← newer"));
    }
    if (page.data.length) {
      pager.push(el("span", {}, (f.offset + 1) + "–" + (f.offset + page.data.length) + " of " + page.count));
    }
    if (f.offset + PAGE_SIZE < page.count) {
      pager.push(el("a", { href: pageUrl({ ...f, offset: f.offset + PAGE_SIZE }), "data-nav": true }, "older →"));
    }
    $("pager").replaceChildren(...pager);
  }

  // --- the token ----------------------------------------------------------------------------

  function forget() {
    sessionStorage.removeItem(TOKEN_KEY);
  }

  function showLogin(message) {
    clearTimeout(timer);
    seq++;
    $("rows").replaceChildren(); // nothing read with a token outlives it
    $("owners").replaceChildren();
    owners.clear();
    picked.clear();
    for (const id of ["session", "filters", "studies", "pager"]) $(id).hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("count").textContent = "";
    notice("");
    $("token").focus();
  }

  function showTable() {
    $("login").hidden = true;
    for (const id of ["filters", "studies", "pager"]) $(id).hidden = false;
    $("session").hidden = !AUTH;
  }

  // --- links that need the token: fetched with it, opened as blob: URLs ----------------------

  function downloadName(response) {
    const m = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
    return m ? m[1] : "download";
  }

  async function openWithToken(a) {
    const href = a.getAttribute("href");
    const inTab = a.dataset.open === "tab";
    // Opened now, inside the click, so that no pop-up blocker stops it; filled when the answer is in.
    const win = inTab ? window.open("", "_blank") : null;
    if (win) {
      win.document.title = "Loading…";
      win.document.body.textContent = "Loading " + href + " …";
    }
    try {
      const r = await request(href);
      const url = URL.createObjectURL(await r.blob());
      if (inTab) {
        // Kept until this page goes: the report's tab may be reloaded.
        if (win) win.location.replace(url);
        else location.assign(url);
      } else {
        const link = el("a", { href: url, download: downloadName(r) });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
      }
    } catch (e) {
      if (win) win.close();
      if (e instanceof AuthError) {
        forget();
        showLogin(e.message);
        return;
      }
      notice(href + ": " + e.message, true);
    }
  }

  // --- wiring -------------------------------------------------------------------------------

  document.addEventListener("click", (ev) => {
    const a = ev.target.closest("a");
    if (!a || ev.defaultPrevented || ev.button !== 0) return;
    if (a.hasAttribute("data-nav") && !(ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey)) {
      ev.preventDefault();
      go(a.getAttribute("href"));
    } else if (AUTH && a.dataset.open) {
      ev.preventDefault(); // a plain navigation would go without the token
      openWithToken(a);
    }
  });

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    $("login-error").textContent = "";
    load();
  });

  $("owner-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    go(pageUrl({ ...filters(), owner: $("owner").value.trim(), offset: 0 }));
  });

  // Compare: the ticked studies, in the order they were ticked (the first is the reference).
  function syncCompare() {
    $("compare").disabled = picked.size < 2;
    $("compare").textContent = picked.size ? "compare picked (" + picked.size + ")" : "compare picked";
  }

  $("rows").addEventListener("change", (ev) => {
    const box = ev.target.closest("input.pick");
    if (!box) return;
    if (box.checked) picked.add(box.value);
    else picked.delete(box.value);
    syncCompare();
  });

  $("compare").addEventListener("click", () => {
    if (picked.size >= 2) location.assign("/ui/compare?ids=" + [...picked].map(encodeURIComponent).join(","));
  });

  $("forget").addEventListener("click", () => {
    forget();
    showLogin("");
  });

  window.addEventListener("popstate", () => {
    syncInputs();
    load();
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) load();
  });

  syncInputs();
  if (AUTH && !token()) showLogin("");
  else if ($("rows").dataset.rendered === "server") timer = setTimeout(tick, POLL_MS); // fresh already
  else load();
})();
