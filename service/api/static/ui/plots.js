// Hand-drawn SVG plots for the /ui/ pages: a log-log heat map and a line chart (log x).
//
// Why by hand: the figures are a grid of at most a few dozen cells and a few lines; a plotting
// library would add megabytes of script to ship and review, and none of this needs eval (the
// pages' policy allows scripts from this server only). docs/pages.md has the reasoning.
(() => {
  "use strict";

  const { el, svg, num } = window.DL;

  // viridis, 9 stops: perceptually even and readable in grey; low values dark.
  const VIRIDIS = ["#440154", "#472c7a", "#3b518b", "#2c718e", "#21908d", "#27ad81", "#5cc863", "#aadc32", "#fde725"];

  function hex(c) {
    return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  }

  function colour(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
    const f = x - i;
    const a = hex(VIRIDIS[i]);
    const b = hex(VIRIDIS[i + 1]);
    return "rgb(" + a.map((v, k) => Math.round(v + f * (b[k] - v))).join(",") + ")";
  }

  function tick(v) {
    const e = Math.log10(v);
    return Math.abs(e - Math.round(e)) < 1e-9 ? "1e" + Math.round(e) : num(v, 2);
  }

  // A heat map of values[i][j] at lr[i] (x) and wd[j] (y, up); cells are equal because the axes are
  // log-spaced. opts: {min, max, label, lowIsGood, onHover(i, j, event), onLeave(), onClick(i, j),
  // mark: [i, j] (outlined), diverged[i][j] > 0: black}. null values are grey (not run yet).
  function heatmap(values, lr, wd, opts) {
    const o = opts || {};
    const n = lr.length;
    const m = wd.length;
    const cw = Math.max(18, Math.min(46, Math.floor(300 / Math.max(n, 1))));
    const ch = Math.max(18, Math.min(40, Math.floor(240 / Math.max(m, 1))));
    const left = 58;
    const top = 22;
    const W = left + n * cw + 86;
    const H = top + m * ch + 44;
    const root = svg("svg", { class: "heatmap", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": o.label || "heat map" });
    root.append(svg("text", { x: left, y: 14, class: "title" }, o.label || ""));
    const lo = o.min;
    const hi = o.max;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < m; j++) {
        const v = values[i] ? values[i][j] : null;
        const div = o.diverged && o.diverged[i] && o.diverged[i][j] > 0;
        let fill = "#e6e8eb";
        if (div) fill = "#111";
        else if (v !== null && v !== undefined && Number.isFinite(v)) {
          fill = colour(hi > lo ? (v - lo) / (hi - lo) : 0.5);
        }
        const rect = svg("rect", {
          x: left + i * cw, y: top + (m - 1 - j) * ch, width: cw - 1, height: ch - 1, fill,
          class: "cell", "data-i": i, "data-j": j, "data-value": v === null || v === undefined ? "" : v,
        });
        if (o.onHover) rect.addEventListener("mousemove", (ev) => o.onHover(i, j, ev));
        if (o.onLeave) rect.addEventListener("mouseleave", () => o.onLeave());
        if (o.onClick) rect.addEventListener("click", () => o.onClick(i, j));
        root.append(rect);
      }
    }
    if (o.mark) {
      root.append(svg("rect", { x: left + o.mark[0] * cw - 1, y: top + (m - 1 - o.mark[1]) * ch - 1,
        width: cw + 1, height: ch + 1, class: "best" }));
    }
    const xStep = Math.ceil(n / 6);
    for (let i = 0; i < n; i += xStep) {
      root.append(svg("text", { x: left + i * cw + cw / 2, y: top + m * ch + 14, class: "tick", "text-anchor": "middle" },
        tick(lr[i])));
    }
    const yStep = Math.ceil(m / 8);
    for (let j = 0; j < m; j += yStep) {
      root.append(svg("text", { x: left - 4, y: top + (m - 1 - j) * ch + ch / 2 + 4, class: "tick", "text-anchor": "end" },
        tick(wd[j])));
    }
    root.append(svg("text", { x: left + (n * cw) / 2, y: H - 6, class: "axis", "text-anchor": "middle" }, "learning rate"));
    root.append(svg("text", { x: 12, y: top + (m * ch) / 2, class: "axis", "text-anchor": "middle",
      transform: "rotate(-90 12 " + (top + (m * ch) / 2) + ")" }, "weight decay"));
    // colour bar
    const bx = left + n * cw + 14;
    const bh = m * ch;
    for (let k = 0; k < 24; k++) {
      root.append(svg("rect", { x: bx, y: top + bh - ((k + 1) * bh) / 24, width: 10, height: bh / 24 + 0.5,
        fill: colour((k + 0.5) / 24) }));
    }
    if (Number.isFinite(lo) && Number.isFinite(hi)) {
      root.append(svg("text", { x: bx + 13, y: top + bh, class: "tick" }, num(lo, 3)));
      root.append(svg("text", { x: bx + 13, y: top + 9, class: "tick" }, num(hi, 3)));
    }
    return root;
  }

  // Lines: series [{name, points: [[x, y], ...]}]; opts {logX, xLabel, yLabel, width, height}.
  const LINE_COLOURS = ["#0969da", "#cf222e", "#2da44e", "#8250df", "#bf8700", "#1b7c83", "#e16f24", "#57606a"];

  function lines(series, opts) {
    const o = opts || {};
    const W = o.width || 300;
    const H = o.height || 200;
    const L = 54;
    const R = 18;
    const T = 20;
    const B = 36;
    const root = svg("svg", { class: "lines", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": o.title || "plot" });
    root.append(svg("text", { x: L, y: 13, class: "title" }, o.title || ""));
    const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (!pts.length) {
      root.append(svg("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" }, "no data yet"));
      return root;
    }
    const fx = (x) => (o.logX ? Math.log10(x) : x);
    let x0 = Math.min(...pts.map((p) => fx(p[0])));
    let x1 = Math.max(...pts.map((p) => fx(p[0])));
    const bar = (p) => (Number.isFinite(p[2]) ? p[2] : 0); // an error bar is drawn inside the frame
    let y0 = Math.min(...pts.map((p) => p[1] - bar(p)));
    let y1 = Math.max(...pts.map((p) => p[1] + bar(p)));
    if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 + 1e-6; y1 += Math.abs(y1) * 0.1 + 1e-6; }
    const pad = (y1 - y0) * 0.06;
    y0 -= pad;
    y1 += pad;
    const sx = (x) => L + ((fx(x) - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    root.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }));
    for (const yv of [y0 + pad, (y0 + y1) / 2, y1 - pad]) {
      root.append(svg("text", { x: L - 4, y: sy(yv) + 4, class: "tick", "text-anchor": "end" }, num(yv, 3)));
    }
    const xs = [...new Set(pts.map((p) => p[0]))].sort((a, b) => a - b);
    const step = Math.ceil(xs.length / 5);
    for (let k = 0; k < xs.length; k += step) {
      root.append(svg("text", { x: sx(xs[k]), y: H - B + 14, class: "tick", "text-anchor": "middle" },
        o.logX ? tick(xs[k]) : num(xs[k], 3)));
    }
    root.append(svg("text", { x: L + (W - L - R) / 2, y: H - 4, class: "axis", "text-anchor": "middle" }, o.xLabel || ""));
    series.forEach((s, k) => {
      const ok = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
      const c = s.colour || LINE_COLOURS[k % LINE_COLOURS.length];
      if (ok.length > 1) {
        root.append(svg("polyline", { points: ok.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "),
          fill: "none", stroke: c, "stroke-width": 1.6, class: "series", "data-name": s.name }));
      }
      for (const p of ok) {
        root.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.4, fill: c }));
        if (Number.isFinite(p[2]) && p[2] > 0) {
          root.append(svg("line", { x1: sx(p[0]), x2: sx(p[0]), y1: sy(p[1] - p[2]), y2: sy(p[1] + p[2]), stroke: c }));
        }
      }
    });
    if (series.length > 1) {
      const legend = el("div", { class: "legend-row" });
      series.forEach((s, k) => legend.append(el("span", { class: "key", "data-colour": k % LINE_COLOURS.length }, s.name)));
      return el("figure", { class: "plot" }, root, legend);
    }
    return root;
  }

  window.DL.plots = { heatmap, lines, colour, LINE_COLOURS };
})();
