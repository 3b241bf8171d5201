# ruff: noqa: E501  (CSS and JavaScript source, not Python)
"""The stylesheet and script of the standalone HTML page, inlined by `seqattr.viz.html` (no network assets).

The script reads the page's JSON payload and builds, for every example: the token strips (click or hover a
generated token to colour the source and prefix by that step's scores), a details panel (step scores, trace,
strongest contributors), the heatmap matrix, and the generation trace table; for a token classifier, its
entity spans select the entity whose attribution colours a strip of input tokens (`seqattr.viz.entities`).
Its colour scale is the same as the terminal view's (`seqattr.viz.console.cell_style`).
"""

CSS = """
:root { --fg: #1d1d1f; --bg: #ffffff; --muted: #6e6e73; --line: #d2d2d7; --panel: #f5f5f7; --accent: #0a66c2; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e8e8ed; --bg: #161618; --muted: #a1a1a6; --line: #3a3a3c; --panel: #222225; --accent: #4ea1ff; }
}
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 16px 24px; }
h1 { font-size: 18px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 18px 0 6px; }
h3 { font-size: 13px; margin: 14px 0 4px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.info { color: var(--muted); font-size: 12px; margin: 0 0 8px; }
.info span { margin-right: 14px; }
section.example { border-top: 1px solid var(--line); padding-top: 6px; margin-top: 12px; }
.strip { display: flex; flex-wrap: wrap; align-items: baseline; gap: 3px; margin: 6px 0; }
.strip-label { width: 64px; flex: none; color: var(--muted); font-size: 12px; }
.tok { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; font-size: 13px; padding: 1px 4px;
       border-radius: 3px; border: 1px solid var(--line); white-space: pre; }
.tok.step { cursor: pointer; border-color: var(--accent); }
.tok.selected { outline: 2px solid var(--accent); outline-offset: 1px; }
.tok.unseen { opacity: .35; }
.tok.masked { opacity: .45; border-style: dashed; background: none !important; color: var(--muted) !important; }
.layout { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.main { flex: 3 1 520px; min-width: 0; }
.details { background: var(--panel); border-radius: 6px; padding: 8px 12px; flex: 1 1 280px; max-width: 440px;
           position: sticky; top: 8px; }
.details table td { padding: 1px 8px 1px 0; }
.bar { display: inline-block; height: 8px; background: var(--accent); border-radius: 2px; vertical-align: middle; }
.legend { display: flex; align-items: center; gap: 6px; font-size: 12px; color: var(--muted); margin: 4px 0; }
.legend .ramp { width: 160px; height: 10px; border-radius: 2px; border: 1px solid var(--line);
  background: linear-gradient(to right, rgb(33,102,172), rgb(214,230,244), var(--bg), rgb(252,222,214),
  rgb(178,24,43)); }
.legend .ramp.unsigned { background: linear-gradient(to right, var(--bg), rgb(252,222,214), rgb(178,24,43)); }
.scroll { overflow-x: auto; max-width: 100%; }
table.matrix, table.trace { border-collapse: collapse; font-size: 11px; }
table.matrix th, table.matrix td, table.trace th, table.trace td { border: 1px solid var(--line); padding: 2px 4px; }
table.matrix td { text-align: right; font-family: ui-monospace, Menlo, Consolas, monospace; min-width: 42px; }
table.matrix th { font-family: ui-monospace, Menlo, Consolas, monospace; font-weight: 600; white-space: pre; }
table.matrix thead th.step-head { cursor: pointer; }
table.matrix .sel-col { outline: 2px solid var(--accent); outline-offset: -2px; }
table.matrix tr.source th.row-head { color: #0e7c86; }
table.matrix tr.target th.row-head { color: #9b2c8f; }
@media (prefers-color-scheme: dark) {
  table.matrix tr.source th.row-head { color: #5ad1dc; } table.matrix tr.target th.row-head { color: #e58be0; }
}
table.matrix tr.score td { color: var(--fg); background: var(--panel); }
table.trace tr { cursor: pointer; }
table.trace tr.off-greedy td { font-weight: 700; color: #b26b00; }
table.trace tr.sel td { background: var(--panel); outline: 1px solid var(--accent); }
.alt { display: inline-block; margin-right: 8px; font-family: ui-monospace, Menlo, Consolas, monospace; }
.muted { color: var(--muted); }
.entity-text { font-size: 15px; line-height: 2; }
mark.entity { background: none; color: inherit; border: 2px solid; border-radius: 4px; padding: 0 3px;
              cursor: pointer; }
mark.entity.selected { outline: 2px solid var(--accent); outline-offset: 1px; }
.entity-label { color: #fff; font-size: 10px; font-weight: 700; border-radius: 3px; padding: 0 3px;
                margin-left: 4px; vertical-align: middle; }
"""

JS = r"""
"use strict";
(function () {
  const payload = JSON.parse(document.getElementById("seqattr-data").textContent);
  const POSITIVE = [[252, 222, 214], [178, 24, 43]];
  const NEGATIVE = [[214, 230, 244], [33, 102, 172]];

  function colour(value, scale) {
    if (value === null || !(scale > 0) || Math.abs(value) / scale < 0.02) return null;
    const strength = Math.min(Math.abs(value) / scale, 1);
    const [pale, strong] = value > 0 ? POSITIVE : NEGATIVE;
    const rgb = pale.map((p, k) => Math.round(p + (strong[k] - p) * strength));
    const luminance = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255;
    return { background: "rgb(" + rgb.join(", ") + ")", color: luminance > 0.55 ? "#000" : "#fff" };
  }
  function paint(node, value, scale) {
    const c = colour(value, scale);
    node.style.background = c ? c.background : "";
    node.style.color = c ? c.color : "";
  }
  function fmt(value) {
    if (value === null || value === undefined) return "";
    const a = Math.abs(value);
    if (a >= 100 || (a > 0 && a < 0.001)) return value.toExponential(1);
    return a < 10 ? value.toFixed(3) : value.toFixed(2);
  }
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  payload.examples.forEach((example, i) => render(document.getElementById("example-" + i), example));

  function render(root, ex) {
    const numSteps = ex.end - ex.start;
    const tokenNodes = { source: [], target: [] };
    const matrixCells = [];      // [step] -> cells of that column (header included)
    const traceRows = [];
    let pinned = 0;

    // Token strips: the generated tokens are the steps to pick.
    const strips = root.querySelector(".strips");
    for (const side of ["source", "target"]) {
      if (!ex.labels[side].length) continue;
      const strip = el("div", "strip");
      strip.appendChild(el("span", "strip-label", side === "source" ? "source" : "target"));
      ex.labels[side].forEach((label, pos) => {
        const span = el("span", "tok", label);
        span.dataset.side = side;
        span.dataset.pos = pos;
        span.title = ex.tokens[side][pos];
        if (ex.masked[side].includes(pos)) span.classList.add("masked");
        if (side === "target" && pos >= ex.start && pos < ex.end) {
          span.classList.add("step");
          span.dataset.step = pos - ex.start;
          hook(span, pos - ex.start);
        }
        strip.appendChild(span);
        tokenNodes[side].push(span);
      });
      strips.appendChild(strip);
    }

    // Heatmap matrix: token rows x step columns, step scores below.
    const matrix = root.querySelector("table.matrix");
    const head = matrix.createTHead().insertRow();
    head.appendChild(el("th", "", ""));
    for (let s = 0; s < numSteps; s++) {
      const th = el("th", "step-head", ex.labels.target[ex.start + s]);
      th.dataset.step = s;
      th.title = "step " + s;
      hook(th, s);
      head.appendChild(th);
      matrixCells.push([th]);
    }
    const body = matrix.createTBody();
    for (const side of ["source", "target"]) {
      const scores = ex.scores[side];
      if (!scores) continue;
      ex.labels[side].forEach((label, pos) => {
        if (ex.masked[side].includes(pos)) return;
        const row = body.insertRow();
        row.className = side;
        row.appendChild(el("th", "row-head", label));
        for (let s = 0; s < numSteps; s++) {
          const value = scores[pos][s];
          const cell = row.insertCell();
          cell.textContent = fmt(value);
          cell.title = label + " \u2192 " + ex.labels.target[ex.start + s] + ": " + fmt(value);
          paint(cell, value, ex.scale);
          hook(cell, s);
          matrixCells[s].push(cell);
        }
      });
    }
    for (const name of Object.keys(ex.step_scores)) {
      const row = body.insertRow();
      row.className = "score";
      row.appendChild(el("th", "", name));
      ex.step_scores[name].forEach((value, s) => { row.insertCell().textContent = fmt(value); });
    }

    // Generation trace.
    const traceTable = root.querySelector("table.trace");
    if (ex.trace) {
      const th = traceTable.createTHead().insertRow();
      // Context reliance: KL(with || without the prompt's context parts), when the call named them.
      const reliance = ex.trace.context_reliance;
      const names = ["step", "token", "p", "rank", "entropy"].concat(reliance ? ["context reliance"] : [], ["top alternatives"]);
      for (const name of names) th.appendChild(el("th", "", name));
      const tb = traceTable.createTBody();
      ex.trace.tokens.forEach((token, s) => {
        const row = tb.insertRow();
        if (ex.trace.ranks[s] > 0) row.classList.add("off-greedy");
        [String(s), token, ex.trace.probabilities[s].toFixed(3), String(ex.trace.ranks[s]),
         ex.trace.entropy[s].toFixed(2)].concat(reliance ? [fmt(reliance[s])] : [])
          .forEach((text) => { row.insertCell().textContent = text; });
        const alternatives = row.insertCell();
        ex.trace.top_tokens[s].forEach((alt, k) => {
          alternatives.appendChild(el("span", "alt", alt + " " + ex.trace.top_probabilities[s][k].toFixed(2)));
        });
        row.addEventListener("click", () => { pinned = s; show(s); });
        traceRows.push(row);
      });
    } else {
      traceTable.closest(".trace-block").style.display = "none";
    }

    function hook(node, step) {
      node.addEventListener("mouseenter", () => show(step));
      node.addEventListener("mouseleave", () => show(pinned));
      node.addEventListener("click", () => { pinned = step; show(step); });
    }

    function show(step) {
      root.dataset.selectedStep = step;
      for (const side of ["source", "target"]) {
        const scores = ex.scores[side];
        tokenNodes[side].forEach((span, pos) => {
          const value = scores ? scores[pos][step] : null;
          span.classList.toggle("unseen", scores !== null && value === null);
          span.classList.toggle("selected", side === "target" && pos === ex.start + step);
          span.dataset.score = value === null ? "" : String(value);
          if (span.classList.contains("masked")) return;
          paint(span, value, ex.scale);
          span.title = ex.tokens[side][pos] + (value === null ? "" : ": " + fmt(value));
        });
      }
      matrixCells.forEach((cells, s) => cells.forEach((c) => c.classList.toggle("sel-col", s === step)));
      traceRows.forEach((row, s) => row.classList.toggle("sel", s === step));
      details(step);
      showPartners(step);
    }

    function details(step) {
      const panel = root.querySelector(".details");
      panel.replaceChildren();
      const position = ex.start + step;
      panel.appendChild(el("h3", "", "step " + step + " of " + numSteps));
      const title = el("div");
      title.appendChild(el("span", "muted", "generated "));
      title.appendChild(el("span", "tok selected-token", ex.labels.target[position]));
      title.appendChild(el("span", "muted", "  (target position " + position + ")"));
      panel.appendChild(title);
      function pairs(heading, entries) {
        if (!entries.length) return;
        panel.appendChild(el("h3", "", heading));
        const table = el("table");
        for (const [name, value] of entries) {
          const row = table.insertRow();
          row.insertCell().textContent = name;
          row.insertCell().textContent = value;
        }
        panel.appendChild(table);
      }
      pairs("step scores", Object.keys(ex.step_scores).map((name) => [name, fmt(ex.step_scores[name][step])]));
      if (ex.trace) {
        pairs("trace", [["p", ex.trace.probabilities[step].toFixed(3)], ["rank", String(ex.trace.ranks[step])],
                        ["entropy", ex.trace.entropy[step].toFixed(2)]].concat(
                          ex.trace.context_reliance ? [["context reliance", fmt(ex.trace.context_reliance[step])]] : []));
        panel.appendChild(el("h3", "", "top alternatives"));
        const alts = el("table");
        ex.trace.top_tokens[step].forEach((alt, k) => {
          const p = ex.trace.top_probabilities[step][k];
          const row = alts.insertRow();
          row.insertCell().appendChild(el("span", "tok", alt));
          const bar = el("span", "bar");
          bar.style.width = Math.max(1, Math.round(p * 120)) + "px";
          row.insertCell().appendChild(bar);
          row.insertCell().textContent = p.toFixed(3);
        });
        panel.appendChild(alts);
      }
      panel.appendChild(el("h3", "", "strongest contributors"));
      const ranked = [];
      for (const side of ["source", "target"]) {
        const scores = ex.scores[side];
        if (!scores) continue;
        scores.forEach((row, pos) => {
          if (row[step] !== null && !ex.masked[side].includes(pos)) ranked.push([Math.abs(row[step]), side, pos, row[step]]);
        });
      }
      ranked.sort((a, b) => b[0] - a[0]);
      const top = el("table", "contributors");
      for (const [, side, pos, value] of ranked.slice(0, 5)) {
        const row = top.insertRow();
        const token = el("span", "tok", ex.labels[side][pos]);
        paint(token, value, ex.scale);
        row.insertCell().appendChild(token);
        row.insertCell().textContent = side + " " + pos;
        row.insertCell().textContent = fmt(value);
      }
      panel.appendChild(top);
    }

    // Entities of a token classifier: clicking one colours the input tokens by its attribution, on one
    // scale for all of the example's entities.
    if (ex.entities && ex.entities.length) {
      const strip = root.querySelector(".entity-scores");
      const marks = Array.from(root.querySelectorAll("mark.entity"));
      const entityScale = Math.max(0, ...ex.entities.flatMap((e) => e.scores.filter((v) => v !== null).map(Math.abs)));
      const entityTokens = ex.labels.source.map((label, pos) => {
        const span = el("span", "tok", label);
        span.dataset.pos = pos;
        strip.appendChild(span);
        return span;
      });
      function showEntity(k) {
        root.dataset.selectedEntity = k;
        marks.forEach((mark) => mark.classList.toggle("selected", Number(mark.dataset.entity) === k));
        const entity = ex.entities[k];
        strip.querySelector(".strip-label").textContent = entity.label + " " + entity.text;
        entityTokens.forEach((span, pos) => {
          const value = entity.scores[pos];
          span.dataset.score = value === null ? "" : String(value);
          span.classList.toggle("unseen", value === null);
          span.classList.toggle("selected", pos >= entity.start && pos < entity.end);
          paint(span, value, entityScale);
          span.title = ex.tokens.source[pos] + (value === null ? "" : ": " + fmt(value));
        });
      }
      marks.forEach((mark) => mark.addEventListener("click", () => showEntity(Number(mark.dataset.entity))));
      showEntity(0);
    }

    // Interactions (integrated / expected Hessians): a token picked in the block's strip, its partners
    // coloured by their interaction with it on the selected step, on one scale for the whole example.
    let showPartners = () => {};
    if (ex.interactions) {
      const inter = ex.interactions;
      const strip = root.querySelector(".interaction-scores");
      const partners = root.querySelector("table.partners");
      let anchor = null;
      const nodes = inter.features.map(([side, pos], f) => {
        const span = el("span", "tok", ex.labels[side][pos]);
        span.dataset.feature = f;
        span.addEventListener("click", () => { anchor = f; showPartners(Number(root.dataset.selectedStep)); });
        strip.appendChild(span);
        return span;
      });
      showPartners = (step) => {
        root.dataset.anchor = anchor === null ? "" : String(anchor);
        const row = anchor === null ? null : inter.values[anchor];
        strip.querySelector(".strip-label").textContent = anchor === null ? "partners of (click a token)"
          : "partners of " + ex.labels[inter.features[anchor][0]][inter.features[anchor][1]];
        const ranked = [];
        nodes.forEach((span, f) => {
          const value = row === null ? null : row[f][step];
          span.dataset.score = value === null ? "" : String(value);
          span.classList.toggle("unseen", row !== null && value === null);
          span.classList.toggle("selected", f === anchor);
          paint(span, value, inter.scale);
          const [side, pos] = inter.features[f];
          span.title = ex.tokens[side][pos] + (value === null ? "" : ": " + fmt(value));
          if (value !== null && f !== anchor) ranked.push([Math.abs(value), f, value]);
        });
        ranked.sort((a, b) => b[0] - a[0]);
        partners.replaceChildren();
        for (const [, f, value] of ranked.slice(0, 5)) {
          const [side, pos] = inter.features[f];
          const r = partners.insertRow();
          const token = el("span", "tok", ex.labels[side][pos]);
          paint(token, value, inter.scale);
          r.insertCell().appendChild(token);
          r.insertCell().textContent = side + " " + pos;
          r.insertCell().textContent = fmt(value);
        }
      };
    }

    // Fix the details panel at its tallest so that hovering never changes the page's height: a page
    // scrolled to its end would otherwise shift the tokens under the pointer and flicker.
    const panel = root.querySelector(".details");
    let tallest = 0;
    for (let s = 0; s < numSteps; s++) { details(s); tallest = Math.max(tallest, panel.offsetHeight); }
    panel.style.minHeight = tallest + "px";
    if (numSteps > 0) show(0);
  }
})();
"""
