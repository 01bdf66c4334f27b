// Shared by the /ui/ pages: DOM helpers, the API with the tab's token, the sign-in form, numbers.
//
// The token is the one the team page (/) keeps: sessionStorage "decouple.token", sent as
// "Authorization: Bearer", never in a URL. Everything a user typed reaches the DOM as text
// (textContent, setAttribute), never through innerHTML.
(() => {
  "use strict";

  const body = document.body;
  const AUTH = body.dataset.auth === "required";
  const TOKEN_KEY = "decouple.token";
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    node.append(...kids.filter((k) => k !== null && k !== undefined));
    return node;
  }

  function svg(tag, attrs, ...kids) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    node.append(...kids.filter((k) => k !== null && k !== undefined));
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
  }

  function notice(text, isError) {
    $("notice").textContent = text;
    $("notice").classList.toggle("error", Boolean(isError));
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // fetch with the token; JSON in and out. A 4xx/5xx throws ApiError carrying the JSON body.
  async function api(path, options) {
    const opts = options || {};
    const headers = AUTH ? { Authorization: "Bearer " + token() } : {};
    const init = { method: opts.method || "GET", headers, cache: "no-store" };
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.json);
    }
    const r = await fetch(path, init);
    let answer = null;
    try {
      answer = await r.json();
    } catch (_) { /* not JSON */ }
    if (r.ok) return answer;
    const detail = answer && answer.detail ? String(answer.detail) : r.status + " " + r.statusText;
    if (r.status === 401) throw new AuthError(detail);
    throw new ApiError(detail, r.status, answer);
  }

  // A link that needs the token (the report page, JSON): fetched with it, opened as a blob: URL.
  async function openWithToken(href) {
    const win = window.open("", "_blank");
    try {
      const headers = AUTH ? { Authorization: "Bearer " + token() } : {};
      const r = await fetch(href, { headers, cache: "no-store" });
      if (!r.ok) throw new Error(r.status + " " + r.statusText);
      const url = URL.createObjectURL(await r.blob());
      if (win) win.location.replace(url);
      else location.assign(url);
    } catch (e) {
      if (win) win.close();
      notice(href + ": " + e.message, true);
    }
  }

  // A download that needs the token (CSV, Parquet, a figure, the offline report): fetched with it
  // and saved under the server's file name. With auth off the link downloads by itself.
  async function download(href) {
    const headers = AUTH ? { Authorization: "Bearer " + token() } : {};
    const r = await fetch(href, { headers, cache: "no-store" });
    if (!r.ok) {
      let detail = r.status + " " + r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (_) { /* not JSON */ }
      if (r.status === 401) throw new AuthError(detail);
      throw new Error(href + ": " + detail);
    }
    const m = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: m ? m[1] : "download" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function downloadLink(href, text) {
    const a = el("a", { href, download: "", class: "export" }, text);
    a.addEventListener("click", (ev) => {
      if (!AUTH || ev.button !== 0) return;
      ev.preventDefault();
      download(href).catch(handle);
    });
    return a;
  }

  function tokenLink(a) {
    a.addEventListener("click", (ev) => {
      if (!AUTH || ev.button !== 0) return;
      ev.preventDefault();
      openWithToken(a.getAttribute("href"));
    });
  }

  // --- sign-in -------------------------------------------------------------------------------

  let started = null;

  function showLogin(message) {
    $("main").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    notice("");
    $("token").focus();
  }

  function handle(e) {
    // The one place errors of a page's loop end: a 401 asks for the token again.
    if (e instanceof AuthError) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(e.message);
      return true;
    }
    notice(e.message, true);
    return false;
  }

  function start(main) {
    started = main;
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      run();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    run();
  }

  function run() {
    if (AUTH && !token()) {
      showLogin("");
      return;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    $("session").hidden = !AUTH;
    Promise.resolve().then(started).catch(handle);
  }

  // --- numbers -------------------------------------------------------------------------------

  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
    const d = digits || 3;
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(Math.max(d - 1, 0)).replace("e", "e");
    return String(Number(v.toPrecision(d)));
  }

  // A 95% interval; a null end is unbounded (docs/api.md), both null: no interval.
  function ci(pair, digits) {
    if (!pair || (pair[0] === null && pair[1] === null)) return "";
    const lo = pair[0] === null ? "−∞" : num(pair[0], digits);
    const hi = pair[1] === null ? "∞" : num(pair[1], digits);
    return "[" + lo + ", " + hi + "]";
  }

  function meanSe(values) {
    const xs = values.filter((v) => Number.isFinite(v));
    if (!xs.length) return { mean: null, se: null, n: 0 };
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    if (xs.length < 2) return { mean, se: null, n: xs.length };
    const varr = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1);
    return { mean, se: Math.sqrt(varr / xs.length), n: xs.length };
  }

  function query() {
    return new URLSearchParams(location.search);
  }

  window.DL = { $, el, svg, api, notice, handle, start, num, ci, meanSe, query, tokenLink, downloadLink,
    AuthError, ApiError, AUTH, pollMs: Number(body.dataset.pollMs || 3000) };
})();
