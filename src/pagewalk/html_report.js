"use strict";
(function () {
  const started = performance.now();
  const doc = JSON.parse(document.getElementById("pagemap-data").textContent);
  const app = document.getElementById("app");
  const tip = document.getElementById("tip");

  // --- formatting: as pagewalk.format_size ---------------------------------------------------------------
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  function size(bytes, signed) {
    if (bytes === null || bytes === undefined) return "–";
    let sign = "";
    if (signed) sign = bytes >= 0 ? "+" : "-";
    else if (bytes < 0) sign = "-";
    let m = Math.abs(bytes), i = 0;
    while (m >= 1024 && i < UNITS.length - 1) { m /= 1024; i++; }
    return i === 0 ? `${sign}${Math.trunc(m)} B` : `${sign}${tenths(Math.abs(bytes), 1024 ** i)} ${UNITS[i]}`;
  }
  // bytes / divisor with one decimal, a tie rounded to even as Python's format does: toFixed rounds it up, and
  // 1.25 MiB (320 pages) would read 1.3 MiB here and 1.2 MiB in the terminal.
  function tenths(bytes, divisor) {
    if (!Number.isSafeInteger(bytes)) return (bytes / divisor).toFixed(1);
    const num = BigInt(bytes) * 10n, den = BigInt(divisor);
    let q = num / den;
    const twice = 2n * (num % den);
    if (twice > den || (twice === den && q % 2n === 1n)) q += 1n;
    return `${q / 10n}.${q % 10n}`;
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  // Test ids wrap after "::" and "/" rather than in the middle of a name.
  function breakable(text) {
    const parts = [];
    for (const piece of String(text).split(/(?<=::|\/)/)) parts.push(piece, document.createElement("wbr"));
    return parts;
  }
  function sizeCell(bytes, signed) {
    return el("td", { class: "num", "data-bytes": bytes === null || bytes === undefined ? "" : String(bytes), text: size(bytes, signed) });
  }

  // --- what matters about a measurement -------------------------------------------------------------------
  const GATE_RANK = { regression: 0, worse: 2, better: 3, improvement: 4, unchanged: 5 };
  const rank = (status) => (status in GATE_RANK ? GATE_RANK[status] : 1); // unknown statuses just below failures
  const comparison = doc.comparison || null;
  const gateRows = comparison && Array.isArray(comparison.rows) ? comparison.rows : [];
  const regressedKeys = new Set(gateRows.filter((r) => r.status === "regression").map((r) => r.key));

  const measurements = (doc.measurements || []).map((m, index) => {
    const map = m.map || null;
    const verdicts = (map && map.verdicts) || m.verdicts || [];
    const failedVerdicts = verdicts.filter((v) => !v.passed);
    const failed = failedVerdicts.length > 0 || regressedKeys.has(m.key);
    return { index, record: m, map, verdicts, failedVerdicts, failed };
  });
  measurements.sort((a, b) => (b.failed - a.failed) || (a.index - b.index));

  function keyMetric(item) {
    const gate = gateRows.find((r) => r.key === item.record.key && r.status === "regression");
    if (gate) return gate.metric;
    if (item.failedVerdicts.length) return item.failedVerdicts[0].metric;
    if (item.verdicts.length) return item.verdicts[0].metric;
    return "uss_growth";
  }
  function metricValue(item, metric) {
    const metrics = item.record.metrics || (item.map && item.map.metrics) || {};
    return metric in metrics ? metrics[metric] : null;
  }
  function verdictText(v) {
    const unit = (x) => (v.unit === "pages" ? `${x} pages` : size(x));
    return `${v.passed ? "pass" : "FAIL"} ${v.metric} ${unit(v.measured)} ${v.passed ? "≤" : ">"} ${unit(v.limit)} (${v.source})`;
  }

  // --- the gate -------------------------------------------------------------------------------------------
  function gateCell(key, value) {
    if (["baseline", "current", "change"].includes(key) && typeof value === "number") return sizeCell(value, key === "change");
    if (key === "change_percent") return el("td", { class: "num", text: value === null ? "–" : `${value >= 0 ? "+" : ""}${value.toFixed(1)}%` });
    if (key === "status") return el("td", {}, el("span", { class: `badge ${value === "regression" ? "bad" : value === "improvement" ? "good" : "plain"}`, text: String(value) }));
    return el("td", { class: key === "key" ? "name" : null, text: value === null || value === undefined ? "–" : String(value) });
  }
  function renderGate(c) {
    const failed = gateRows.some((r) => r.status === "regression") || c.passed === false;
    const box = el("section", { class: `gate ${failed ? "failed" : "passed"}`, id: "gate" });
    box.append(el("h2", {}, "Gate ", el("span", { class: `badge ${failed ? "bad" : "good"}`, text: failed ? "FAILED" : "passed" })));
    const about = [];
    if (c.baseline) about.push(`compared with ${c.baseline}${c.baseline_created ? ` (saved ${c.baseline_created})` : ""}`);
    if (Array.isArray(c.thresholds)) about.push(`thresholds: ${c.thresholds.length ? c.thresholds.join(", ") : "none"}`);
    box.append(el("div", { class: "muted", text: about.join(" · ") }));
    for (const w of c.warnings || []) box.append(el("div", {}, el("span", { class: "badge warn", text: "warning" }), ` ${w}`));
    const skip = new Set(["test", "label"]);
    const columns = [];
    for (const row of gateRows) for (const k of Object.keys(row)) if (!skip.has(k) && !columns.includes(k)) columns.push(k);
    const sorted = gateRows.map((r, i) => [r, i]).sort((a, b) => rank(a[0].status) - rank(b[0].status) || a[1] - b[1]).map((p) => p[0]);
    const shown = sorted.filter((r) => r.status !== "unchanged");
    const hidden = sorted.length - shown.length;
    const table = el("table", { class: "gate-rows" });
    table.append(el("tr", {}, ...columns.map((k) => el("th", { class: ["baseline", "current", "change", "change_percent"].includes(k) ? "num" : null, text: k.replace("_", " ") }))));
    const addRows = (rows) => {
      for (const r of rows) {
        const row = el("tr", { class: "clickable", "data-status": r.status }, ...columns.map((k) => gateCell(k, r[k])));
        row.addEventListener("click", () => openMeasurement(r.key));
        table.append(row);
      }
    };
    addRows(shown);
    box.append(table);
    if (hidden) {
      const more = el("button", { class: "link", text: `show ${hidden} unchanged` });
      more.addEventListener("click", () => { addRows(sorted.filter((r) => r.status === "unchanged")); more.remove(); });
      box.append(el("div", { class: "muted" }, more));
    }
    const other = [];
    if ((c.new || []).length) other.push(`new, not in the baseline: ${c.new.join(", ")}`);
    if ((c.removed || []).length) other.push(`removed: ${c.removed.join(", ")}`);
    for (const line of other) box.append(el("div", { class: "muted", text: line }));
    return box;
  }

  // --- one row per measurement ----------------------------------------------------------------------------
  function renderOverview() {
    const box = el("section", { id: "overview" }, el("h2", { text: "Measurements" }));
    const anyPeak = measurements.some((m) => m.map && m.map.peak_rss !== null && m.map.peak_rss !== undefined);
    const head = ["", "test", "label", "metric", "value", "change"];
    if (anyPeak) head.push("peak");
    head.push("verdict");
    const table = el("table", { class: "overview" }, el("tr", {}, ...head.map((h) => el("th", { class: ["value", "change", "peak"].includes(h) ? "num" : null, text: h }))));
    for (const item of measurements) {
      const metric = keyMetric(item);
      const base = metric.replace(/_growth$/, "");
      const level = metricValue(item, base);
      const growth = metric === base ? metricValue(item, `${base}_growth`) : metricValue(item, metric);
      const verdict = item.failedVerdicts.length ? verdictText(item.failedVerdicts[0]) : regressedKeys.has(item.record.key) ? "regressed against the baseline" : item.verdicts.length ? `pass (${item.verdicts.length} limit${item.verdicts.length === 1 ? "" : "s"})` : "no limits";
      const row = el("tr", { class: "clickable", "data-key": item.record.key, "data-failed": item.failed ? "1" : "0" },
        el("td", {}, el("span", { class: `badge ${item.failed ? "bad" : "good"}`, text: item.failed ? "FAIL" : "ok" })),
        el("td", { class: "test" }, ...breakable(item.record.test || item.record.key)),
        el("td", { class: "label muted", title: item.record.label || "", text: item.record.label || "" }),
        el("td", { text: base }),
        sizeCell(level, false),
        sizeCell(growth, true));
      if (anyPeak) row.append(sizeCell(item.map ? item.map.peak_rss : null, false));
      row.append(el("td", { class: item.failed ? "bad-text" : "muted", text: verdict }));
      row.addEventListener("click", () => openMeasurement(item.record.key));
      table.append(row);
    }
    box.append(table);
    return box;
  }

  function openMeasurement(key) {
    const section = [...document.querySelectorAll("details.measurement")].find((d) => d.dataset.key === key);
    if (!section) return;
    section.open = true;
    section.scrollIntoView({ behavior: "smooth" });
  }

  // --- a measurement --------------------------------------------------------------------------------------
  let eagerLeft = 6;
  function renderMeasurement(item, open) {
    const details = el("details", { class: `measurement${item.failed ? " failed" : ""}`, id: `m${item.index}`, "data-key": item.record.key });
    const summary = el("summary", {},
      el("span", { class: `badge ${item.failed ? "bad" : "good"}`, text: item.failed ? "FAIL" : "ok" }), " ",
      el("span", { class: "test", text: item.record.test || item.record.key }), "  ",
      el("span", { class: "label", text: item.record.label || "" }));
    details.append(summary);
    let rendered = false;
    const render = () => {
      if (rendered || !details.open) return;
      rendered = true;
      details.append(renderBody(item));
    };
    let waiting = false; // for the viewport: opening it programmatically fires "toggle" too
    details.addEventListener("toggle", () => { if (!waiting) render(); });
    if (open) {
      details.open = true;
      // The first few are drawn at once; the others when they come near the viewport, so a suite with
      // many failures opens as fast as one with a few.
      if (eagerLeft-- > 0 || typeof IntersectionObserver === "undefined") render();
      else {
        waiting = true;
        const observer = new IntersectionObserver((entries) => {
          if (entries.some((e) => e.isIntersecting)) { observer.disconnect(); waiting = false; render(); }
        }, { rootMargin: "800px" });
        observer.observe(details);
      }
    }
    return details;
  }

  function renderBody(item) {
    const body = el("div", { class: "body" });
    const map = item.map;
    if (!map) {
      body.append(el("p", { class: "muted", text: "No memory map was recorded for this measurement." }));
      return body;
    }
    const facts = el("div", { class: "facts" });
    facts.append(renderTotals(map));
    facts.append(renderVerdicts(item, map));
    body.append(facts);
    const regions = Regions(map);
    body.append(renderMaps(map, regions));
    body.append(renderTopRegions(item, map, regions));
    body.append(renderAllRegions(regions));
    return body;
  }

  const ALWAYS = new Set(["rss", "uss", "pss", "anon", "file"]);
  function renderTotals(map) {
    const box = el("div", {}, el("h3", { text: "Totals" }));
    const before = map.totals.before, after = map.totals.after;
    const table = el("table", { class: "totals" });
    table.append(el("tr", {}, el("th", { text: "" }), ...(before ? [el("th", { class: "num", text: "before" })] : []), el("th", { class: "num", text: before ? "after" : "now" }), ...(before ? [el("th", { class: "num", text: "change" })] : [])));
    for (const name of Object.keys(after)) {
      if (after[name] === null) continue; // not measured: no row
      if (!ALWAYS.has(name) && !after[name] && !(before && before[name])) continue; // none before or after
      const row = el("tr", { "data-metric": name }, el("td", { text: name }));
      if (before) row.append(sizeCell(before[name], false));
      row.append(sizeCell(after[name], false));
      if (before) row.append(sizeCell(before[name] === null ? null : after[name] - before[name], true));
      table.append(row);
    }
    const extra = [["peak rss", map.peak_rss], ["written", map.metrics && map.metrics.written], ["accessed", map.metrics && map.metrics.accessed]];
    for (const [name, value] of extra) {
      if (value === null || value === undefined || typeof value !== "number") continue;
      const row = el("tr", { "data-metric": name.replace(" ", "_") }, el("td", { text: name }));
      if (before) row.append(el("td"));
      row.append(sizeCell(value, false));
      table.append(row);
    }
    box.append(table);
    if (map.seconds !== null && map.seconds !== undefined) box.append(el("div", { class: "muted", text: `over ${map.seconds.toFixed(2)} s` }));
    return box;
  }

  function renderVerdicts(item, map) {
    const box = el("div", {}, el("h3", { text: "Limits" }));
    if (!item.verdicts.length) box.append(el("div", { class: "muted", text: "no limits checked" }));
    const list = el("ul", { class: "plain" });
    for (const v of item.verdicts.slice().sort((a, b) => a.passed - b.passed)) list.append(el("li", { class: v.passed ? "good-text" : "bad-text", text: verdictText(v) }));
    box.append(list);
    const gate = gateRows.filter((r) => r.key === item.record.key && r.status !== "unchanged");
    if (gate.length) {
      box.append(el("h3", { text: "Against the baseline" }));
      const gl = el("ul", { class: "plain" });
      for (const r of gate.sort((a, b) => rank(a.status) - rank(b.status))) gl.append(el("li", { class: r.status === "regression" ? "bad-text" : "", text: `${r.status} ${r.metric} ${size(r.baseline)} → ${size(r.current)} (${size(r.change, true)})${r.threshold ? `, threshold ${r.threshold}` : ""}` }));
      box.append(gl);
    }
    box.append(el("h3", { text: "Process" }));
    box.append(el("div", { class: "name", text: `pid ${map.pid}: ${map.command}` }));
    if (map.processes) box.append(el("pre", { class: "tree", text: describeTree(map.processes) }));
    if (map.flags_gained && Object.keys(map.flags_gained).length) box.append(el("div", { text: `flags gained (pages): ${Object.entries(map.flags_gained).map(([k, v]) => `${k}=${v}`).join(", ")}` }));
    if (map.notes && map.notes.length) {
      box.append(el("h3", { text: "Notes" }));
      const notes = el("ul", { class: "plain" });
      for (const n of map.notes) notes.append(el("li", { class: "muted", text: n }));
      box.append(notes);
    }
    return box;
  }

  function describeTree(value, depth) {
    depth = depth || 0;
    const pad = "  ".repeat(depth);
    if (Array.isArray(value)) return value.map((v) => describeTree(v, depth)).join("\n");
    if (value && typeof value === "object") {
      const children = value.children || value.processes;
      const own = Object.entries(value).filter(([k, v]) => k !== "children" && k !== "processes" && (typeof v !== "object" || v === null))
        .map(([k, v]) => (typeof v === "number" && /rss|uss|pss|swap|anon|size|bytes|peak/.test(k) ? `${k} ${size(v)}` : `${k} ${v}`)).join("  ");
      return pad + own + (children ? "\n" + describeTree(children, depth + 1) : "");
    }
    return pad + String(value);
  }

  // --- regions, as columns --------------------------------------------------------------------------------
  function Regions(map) {
    const col = {};
    map.columns.forEach((name, i) => { col[name] = i; });
    const rows = map.regions;
    const n = rows.length;
    // Addresses are hex strings (as in /proc/PID/maps): [vsyscall] lies beyond what JSON integers hold.
    // As numbers they serve for sizes and layout, exact below 2**53 and to the page above it.
    const num = (text) => (text === null ? null : parseInt(text, 16));
    const start = new Float64Array(n), end = new Float64Array(n), lo = new Float64Array(n), hi = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const r = rows[i];
      start[i] = num(r[col.start]);
      end[i] = num(r[col.end]);
      const bs = num(r[col.before_start]), be = num(r[col.before_end]);
      lo[i] = bs === null ? start[i] : Math.min(start[i], bs);
      hi[i] = be === null ? end[i] : Math.max(end[i], be);
    }
    const get = (i, name) => rows[i][col[name]];
    const pad = (text) => text.padStart(12, "0");
    const range = (i) => `${pad(get(i, "start"))}-${pad(get(i, "end"))}`;
    const beforeRange = (i) => `${pad(get(i, "before_start"))}-${pad(get(i, "before_end"))}`;
    const sizeOf = (i) => end[i] - start[i];
    const beforeSize = (i) => num(get(i, "before_end")) - num(get(i, "before_start"));
    return { rows, n, col, lo, hi, get, range, beforeRange, sizeOf, beforeSize, page: map.page_size, hasGrowth: n > 0 && rows[0][col.uss_growth] !== null, selected: -1, listeners: [] };
  }

  const KIND_COLOR = { heap: "#e8590c", stack: "#0c8599", anon: "#1c7ed6", file: "#9775fa", shmem: "#d6336c", hugetlb: "#5c940d", special: "#868e96" };
  const KIND_TINT = { heap: "#fde3d3", stack: "#d3eef2", anon: "#d8e9fb", file: "#f1edfd", shmem: "#f9dbe5", hugetlb: "#e2f0d0", special: "#eceef0" };
  const STATUS_COLOR = { added: "#2f9e44", grown: "#8ce99a", shrunk: "#f59f00", removed: "#e03131" };
  const THP_COLOR = "#ae3ec9", SWAP_COLOR = "#c92a2a", WRITTEN_COLOR = "#f76707";
  const LINE_H = 30, BAND = 4, BODY = 18, LAYER = 4;
  const HUGE_GAP = 1 << 30;

  // Where each region lies along a wrapped strip: widths grow with the square root of the size, so a
  // 4 KiB library page and a 16 GiB heap both show; unmapped gaps take 2 px, or 12 px and a mark when huge.
  function layout(regions, width) {
    const n = regions.n;
    const minPx = n > 20000 ? 1 : n > 3000 ? 2 : n > 400 ? 3 : 5;
    let roots = 0;
    for (let i = 0; i < n; i++) roots += Math.sqrt((regions.hi[i] - regions.lo[i]) / regions.page);
    const lines = Math.max(3, Math.min(12, Math.ceil(n / 60)));
    const scale = roots > 0 ? (width * lines) / roots : 0;
    const x0 = new Float64Array(n), x1 = new Float64Array(n);
    const gaps = [];
    let x = 0;
    for (let i = 0; i < n; i++) {
      if (i > 0 && regions.lo[i] > regions.hi[i - 1]) {
        const gap = regions.lo[i] - regions.hi[i - 1];
        if (gap >= HUGE_GAP) { gaps.push([x, x + 12, gap]); x += 12; } else x += n > 20000 ? 0.5 : 2;
      }
      x0[i] = x;
      x += minPx + Math.sqrt((regions.hi[i] - regions.lo[i]) / regions.page) * scale;
      x1[i] = x;
    }
    return { x0, x1, gaps, total: x, width, lineCount: Math.max(1, Math.ceil(x / width)) };
  }

  function levelsOf(cells) {
    if (!cells) return null;
    const out = new Float32Array(cells.length);
    for (let j = 0; j < cells.length; j++) out[j] = parseInt(cells[j], 16) / 15;
    return out;
  }

  function drawStrip(canvas, regions, geo, which) {
    const dpr = window.devicePixelRatio || 1;
    const width = geo.width, height = geo.lineCount * LINE_H;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, width, height);
    // Draws [a, b) of the strip, wrapping across lines, with `paint(x, y, w, fromFraction, toFraction)`.
    const pieces = (a, b, paint) => {
      let pos = a;
      while (pos < b - 1e-9) {
        const line = Math.floor(pos / width);
        const end = Math.min(b, (line + 1) * width);
        paint(pos - line * width, line * LINE_H, end - pos, (pos - a) / (b - a), (end - a) / (b - a));
        pos = end;
      }
    };
    const resident = which === "before" ? "before_cells" : "resident_cells";
    for (let i = 0; i < regions.n; i++) {
      const status = regions.get(i, "status");
      const kind = regions.get(i, "kind");
      const mapped = which === "before" ? status !== "added" : status !== "removed";
      let cells = regions.get(i, resident);
      if (which === "before" && cells === "") cells = regions.get(i, "resident_cells");
      const levels = levelsOf(cells);
      const thp = which === "after" ? levelsOf(regions.get(i, "thp_cells")) : null;
      const swap = which === "after" ? levelsOf(regions.get(i, "swap_cells")) : null;
      const written = which === "after" && regions.col.written_cells !== undefined ? levelsOf(regions.get(i, "written_cells")) : null;
      const a = geo.x0[i], b = geo.x1[i];
      pieces(a, b, (x, y, w, f0, f1) => {
        const top = y + BAND;
        if (!mapped) {
          ctx.strokeStyle = "#ced4da";
          ctx.setLineDash([2, 2]);
          ctx.strokeRect(x + 0.5, top + 0.5, Math.max(0, w - 1), BODY - 1);
          ctx.setLineDash([]);
        } else {
          ctx.fillStyle = KIND_TINT[kind] || KIND_TINT.special;
          ctx.fillRect(x, top, w, BODY);
          if (levels) fillCells(ctx, levels, x, w, f0, f1, (cx, cw, level) => {
            ctx.fillStyle = KIND_COLOR[kind] || KIND_COLOR.special;
            const h = BODY * level;
            ctx.fillRect(cx, top + BODY - h, cw, h);
          });
        }
        if (STATUS_COLOR[status] && !(which === "before" && status === "added")) {
          ctx.fillStyle = STATUS_COLOR[status];
          ctx.fillRect(x, y, w, BAND - 1);
        }
        if (thp) fillCells(ctx, thp, x, w, f0, f1, (cx, cw, level) => { ctx.fillStyle = THP_COLOR; ctx.fillRect(cx, top + BODY + 1, cw, Math.max(1, (LAYER - 1) * level)); });
        if (written) fillCells(ctx, written, x, w, f0, f1, (cx, cw) => { ctx.fillStyle = WRITTEN_COLOR; ctx.fillRect(cx, y, cw, BAND - 1); });
        if (swap) fillCells(ctx, swap, x, w, f0, f1, (cx, cw, level) => { ctx.fillStyle = SWAP_COLOR; ctx.fillRect(cx, top + BODY + LAYER - 1, cw, 2); });
        if (w >= 4 && f0 === 0) { ctx.fillStyle = "#ffffff"; ctx.fillRect(x, top, 1, BODY); }
      });
    }
    for (const [a, b, gap] of geo.gaps) {
      pieces(a, b, (x, y, w) => {
        ctx.fillStyle = "#f1f3f5";
        ctx.fillRect(x, y + BAND, w, BODY);
        ctx.strokeStyle = "#868e96";
        ctx.beginPath();
        ctx.moveTo(x + 3, y + BAND + BODY - 4); ctx.lineTo(x + w / 2, y + BAND + 4);
        ctx.moveTo(x + w / 2, y + BAND + BODY - 4); ctx.lineTo(x + w - 3, y + BAND + 4);
        ctx.stroke();
      });
    }
    if (regions.selected >= 0) {
      const i = regions.selected;
      ctx.strokeStyle = "#1f2328";
      ctx.lineWidth = 2;
      pieces(geo.x0[i], geo.x1[i], (x, y, w) => ctx.strokeRect(x + 1, y + 1, Math.max(2, w - 2), LINE_H - 3));
      ctx.lineWidth = 1;
    }
  }

  function fillCells(ctx, levels, x, w, f0, f1, paint) {
    const n = levels.length;
    if (n === 1) { if (levels[0] > 0) paint(x, w, levels[0]); return; }
    const first = Math.floor(f0 * n), last = Math.min(n - 1, Math.ceil(f1 * n) - 1);
    const span = f1 - f0;
    for (let j = first; j <= last; j++) {
      if (levels[j] <= 0) continue;
      const c0 = Math.max(f0, j / n), c1 = Math.min(f1, (j + 1) / n);
      paint(x + ((c0 - f0) / span) * w, ((c1 - c0) / span) * w, levels[j]);
    }
  }

  function regionAt(geo, regions, px, py) {
    const pos = Math.floor(py / LINE_H) * geo.width + px;
    let lo = 0, hi = regions.n - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (geo.x0[mid] <= pos) lo = mid; else hi = mid - 1; }
    if (regions.n && geo.x0[lo] <= pos && pos < geo.x1[lo]) return lo;
    for (const [a, b, gap] of geo.gaps) if (a <= pos && pos < b) return { gap };
    return -1;
  }

  function regionFacts(regions, i) {
    const g = (name) => regions.get(i, name);
    const facts = [["range", regions.range(i)], ["size", size(regions.sizeOf(i))]];
    if (g("before_start") !== null) facts.push(["before", `${regions.beforeRange(i)} (${size(regions.beforeSize(i))})`]);
    facts.push(["kind", `${g("kind")}  ${g("perms")}  ${g("status")}`]);
    for (const name of ["rss", "uss", "anon", "swap", "thp"]) {
      const growth = regions.col[`${name}_growth`] !== undefined ? g(`${name}_growth`) : null;
      if (g(name) === null) continue;
      facts.push([name, size(g(name)) + (growth !== null && growth !== undefined ? `  (${size(growth, true)})` : "")]);
    }
    for (const name of ["written", "accessed"]) if (g(name) !== null) facts.push([name, size(g(name))]);
    return facts;
  }

  function showTip(event, regions, hit) {
    tip.replaceChildren();
    if (typeof hit === "object") tip.append(el("div", { class: "t-name", text: `unmapped: ${size(hit.gap)}` }));
    else {
      tip.append(el("div", { class: "t-name", text: regions.get(hit, "name") }));
      tip.append(el("table", {}, ...regionFacts(regions, hit).map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: v })))));
    }
    tip.hidden = false;
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = event.clientY + 16 + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - 10 : event.clientY + 16;
    tip.style.left = `${x}px`;
    tip.style.top = `${y}px`;
  }

  function select(regions, i) {
    regions.selected = i;
    for (const listener of regions.listeners) listener(i);
  }

  function renderMaps(map, regions) {
    const box = el("div", {}, el("h3", { text: "Address space" }));
    box.append(legend(regions));
    const strips = regions.hasGrowth ? ["before", "after"] : ["after"];
    const canvases = strips.map((which) => {
      const canvas = el("canvas", { class: "map", "data-which": which, "aria-label": `memory map ${which}` });
      box.append(el("div", { class: "map-title", text: which === "before" ? "before the workload" : regions.hasGrowth ? "after the workload" : "resident pages" }));
      box.append(el("div", { class: "map-wrap" }, canvas));
      return canvas;
    });
    const detail = el("div", { class: "region-detail", hidden: true });
    box.append(detail);
    let geo = null;
    const draw = () => {
      const width = Math.max(300, Math.floor(box.clientWidth || 1000));
      if (geo && geo.width === width) { canvases.forEach((c, k) => drawStrip(c, regions, geo, strips[k])); return; }
      geo = layout(regions, width);
      canvases.forEach((c, k) => drawStrip(c, regions, geo, strips[k]));
    };
    requestAnimationFrame(draw);
    window.addEventListener("resize", () => { geo = null; requestAnimationFrame(draw); });
    for (const canvas of canvases) {
      canvas.addEventListener("mousemove", (event) => {
        if (!geo) return;
        const rect = canvas.getBoundingClientRect();
        const hit = regionAt(geo, regions, event.clientX - rect.left, event.clientY - rect.top);
        if (hit === -1) tip.hidden = true; else showTip(event, regions, hit);
      });
      canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
      canvas.addEventListener("click", (event) => {
        if (!geo) return;
        const rect = canvas.getBoundingClientRect();
        const hit = regionAt(geo, regions, event.clientX - rect.left, event.clientY - rect.top);
        if (typeof hit === "number" && hit >= 0) select(regions, hit);
      });
    }
    regions.listeners.push((i) => {
      detail.hidden = false;
      detail.replaceChildren(el("div", { class: "name", text: regions.get(i, "name") }),
        el("div", { class: "inline-facts" }, ...regionFacts(regions, i).map(([k, v]) => el("span", {}, el("span", { class: "muted", text: `${k} ` }), v))));
      draw();
    });
    return box;
  }

  function legend(regions) {
    const box = el("div", { class: "legend" });
    const kinds = new Set();
    for (let i = 0; i < regions.n; i++) kinds.add(regions.get(i, "kind"));
    for (const kind of Object.keys(KIND_COLOR)) if (kinds.has(kind)) box.append(el("span", {}, el("span", { class: "swatch", style: `background:${KIND_COLOR[kind]}` }), kind));
    box.append(el("span", { class: "muted", text: "fill: resident pages · width grows with size" }));
    if (regions.hasGrowth) for (const [status, color] of Object.entries(STATUS_COLOR)) box.append(el("span", {}, el("span", { class: "swatch", style: `background:${color};height:4px` }), status));
    box.append(el("span", {}, el("span", { class: "swatch", style: `background:${THP_COLOR};height:4px` }), "THP"));
    box.append(el("span", {}, el("span", { class: "swatch", style: `background:${SWAP_COLOR};height:3px` }), "swapped"));
    let anyWritten = false;
    for (let i = 0; i < regions.n && !anyWritten; i++) anyWritten = regions.col.written_cells !== undefined && !!regions.get(i, "written_cells");
    if (anyWritten) box.append(el("span", {}, el("span", { class: "swatch", style: `background:${WRITTEN_COLOR};height:3px` }), "written (top bar)"));
    box.append(el("span", {}, el("span", { class: "swatch", style: "background:#f1f3f5;border:1px solid #868e96" }), "≥ 1 GiB unmapped"));
    return box;
  }

  // --- tables of regions ----------------------------------------------------------------------------------
  const REGION_COLUMN_FOR = { uss: "uss_growth", uss_growth: "uss_growth", rss: "rss_growth", rss_growth: "rss_growth", anon: "anon_growth", anon_growth: "anon_growth", swap: "swap_growth", written: "written", accessed: "accessed", pss: "uss_growth" };

  function renderTopRegions(item, map, regions) {
    const metric = regions.hasGrowth ? keyMetric(item) : "rss";
    const column = regions.hasGrowth ? REGION_COLUMN_FOR[metric] || "uss_growth" : "rss";
    const order = [];
    for (let i = 0; i < regions.n; i++) if (regions.get(i, column)) order.push(i);
    order.sort((a, b) => Math.abs(regions.get(b, column)) - Math.abs(regions.get(a, column)) || a - b);
    const top = order.slice(0, 15);
    const box = el("div", {}, el("h3", { text: `Regions that contributed most to ${column.replace("_", " ")}` }));
    if (!top.length) { box.append(el("div", { class: "muted", text: `no region changed its ${column.replace("_", " ")}` })); return box; }
    const heads = ["address", "perms", "kind", "status", column.replace("_", " "), "rss", "uss", "swap", "name"];
    const table = el("table", { class: "top-regions", "data-column": column }, el("tr", {}, ...heads.map((h, k) => el("th", { class: k >= 4 && k <= 7 ? "num" : null, text: h }))));
    const rowsByIndex = new Map();
    for (const i of top) {
      const g = (name) => regions.get(i, name);
      const row = el("tr", { class: "clickable", "data-row": String(i), "data-start": g("start") },
        el("td", { class: "addr", text: regions.range(i) }),
        el("td", { text: g("perms") }), el("td", { text: g("kind") }),
        el("td", { class: `status-${g("status")}`, text: g("status") }),
        sizeCell(g(column), column.endsWith("_growth")), sizeCell(g("rss")), sizeCell(g("uss")), sizeCell(g("swap")),
        el("td", { class: "name", text: g("name") }));
      row.addEventListener("click", () => select(regions, i));
      rowsByIndex.set(i, row);
      table.append(row);
    }
    regions.listeners.push((i) => { for (const [k, row] of rowsByIndex) row.classList.toggle("selected", k === i); });
    box.append(table);
    return box;
  }

  function renderAllRegions(regions) {
    const box = el("details", { class: "all-regions" }, el("summary", { text: `All ${regions.n} mappings` }));
    let built = false;
    box.addEventListener("toggle", () => { if (box.open && !built) { built = true; box.append(buildList(regions)); } });
    return box;
  }

  function buildList(regions) {
    const wrap = el("div");
    const filter = el("input", { type: "search", placeholder: "filter by name, kind or status" });
    const sort = el("select", {}, ...["address", "rss", "uss", ...(regions.hasGrowth ? ["uss_growth", "rss_growth"] : []), "size"].map((s) => el("option", { value: s, text: `sort by ${s.replace("_", " ")}` })));
    const count = el("span", { class: "muted" });
    wrap.append(el("div", { class: "tools" }, filter, sort, count));
    const change = regions.hasGrowth ? "uss change" : "thp";
    wrap.append(el("div", { class: "vhead" }, ...["address", "perms", "kind", "status", "rss", "uss", change, "swap", "name"].map((h, k) => el("span", { class: k >= 4 && k <= 7 ? "num" : null, text: h }))));
    const list = el("div", { class: "vlist" });
    const spacer = el("div", { style: "height:0px" });
    list.append(spacer);
    wrap.append(list);
    const ROW = 22;
    let order = [];
    const value = (i, key) => (key === "size" ? regions.sizeOf(i) : key === "address" ? regions.lo[i] : Math.abs(regions.get(i, key) || 0));
    const recompute = () => {
      const needle = filter.value.trim().toLowerCase();
      order = [];
      for (let i = 0; i < regions.n; i++) {
        if (needle && !`${regions.get(i, "name")} ${regions.get(i, "kind")} ${regions.get(i, "status")}`.toLowerCase().includes(needle)) continue;
        order.push(i);
      }
      const key = sort.value;
      if (key !== "address") order.sort((a, b) => value(b, key) - value(a, key) || a - b);
      count.textContent = `${order.length} shown`;
      spacer.style.height = `${order.length * ROW}px`;
      paint(true);
    };
    const pool = [];
    const paint = (force) => {
      const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 5);
      const last = Math.min(order.length, first + Math.ceil(list.clientHeight / ROW) + 10);
      let used = 0;
      for (let k = first; k < last; k++, used++) {
        let row = pool[used];
        if (!row) { row = el("div", { class: "vrow" }); row.addEventListener("click", () => select(regions, Number(row.dataset.row))); pool.push(row); list.append(row); }
        const i = order[k];
        if (force || row.dataset.row !== String(i)) {
          const g = (name) => regions.get(i, name);
          row.dataset.row = String(i);
          row.replaceChildren(el("span", { class: "addr", text: regions.range(i) }), el("span", { text: g("perms") }), el("span", { text: g("kind") }),
            el("span", { class: `status-${g("status")}`, text: g("status") }), el("span", { class: "num", text: size(g("rss")) }), el("span", { class: "num", text: size(g("uss")) }),
            el("span", { class: "num", text: regions.hasGrowth ? size(g("uss_growth"), true) : size(g("thp")) }), el("span", { class: "num", text: size(g("swap")) }), el("span", { text: g("name") }));
        }
        row.style.top = `${k * ROW}px`;
        row.classList.toggle("selected", i === regions.selected);
        row.hidden = false;
      }
      for (let k = used; k < pool.length; k++) pool[k].hidden = true;
    };
    list.addEventListener("scroll", () => paint(false));
    filter.addEventListener("input", recompute);
    sort.addEventListener("change", recompute);
    regions.listeners.push(() => paint(true));
    requestAnimationFrame(recompute);
    return wrap;
  }

  // --- the page -------------------------------------------------------------------------------------------
  function main() {
    const context = doc.context || {};
    const contextBits = [];
    if (doc.created) contextBits.push(doc.created);
    if (context.kernel) contextBits.push(`kernel ${context.kernel}`);
    if (context.machine) contextBits.push(context.machine);
    if (context.git && context.git.commit) contextBits.push(`commit ${String(context.git.commit).slice(0, 12)}`);
    contextBits.push(`${measurements.length} measurement${measurements.length === 1 ? "" : "s"}`);
    document.getElementById("context").textContent = contextBits.join(" · ");

    if (comparison) app.append(renderGate(comparison));
    if (measurements.length > 1 || comparison) app.append(renderOverview());
    const sections = el("div", { id: "measurements" });
    app.append(sections);
    if (!measurements.length) sections.append(el("p", { class: "muted", text: "No measurements." }));
    const autoOpen = measurements.length <= 3;
    for (const item of measurements) sections.append(renderMeasurement(item, autoOpen || item.failed));
  }

  main();
  // Observable by tests and by people: how long the page took to draw what is open.
  requestAnimationFrame(() => requestAnimationFrame(() => {
    document.body.dataset.renderMs = String(Math.round(performance.now() - started));
    document.body.dataset.ready = "1";
  }));
})();
