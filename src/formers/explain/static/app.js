// formers explain: the page. Vanilla JS, no dependencies; all data comes from the local JSON API.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, children = []) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.appendChild(c);
  return e;
};
const fmt = (x, d = 3) => (x === null ? "-\u221e" : Number(x).toFixed(d));

const state = { info: null, compare: false, generated: 0, seed: 0, busy: 0, last: [] };
window.__explain = state;  // read by the browser tests

async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function settings() {
  return {
    text: $("#prompt").value,
    layer: Number($("#layer").value), head: Number($("#head").value),
    temperature: Number($("#temperature").value), top_k: Number($("#top-k").value) || 0,
    top_p: Number($("#top-p").value), mode: $("#mode").value,
  };
}

function showError(msg) {
  const e = $("#error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

// ------------------------------------------------------------------ colour scales
function seqColor(v) {  // 0..1 -> white..blue
  const t = Math.max(0, Math.min(1, v));
  return `rgb(${Math.round(255 - 226 * t)},${Math.round(255 - 170 * t)},${Math.round(255 - 98 * t)})`;
}
function divColor(v, m) {  // -m..m -> orange..white..blue
  const t = m > 0 ? Math.max(-1, Math.min(1, v / m)) : 0;
  return t >= 0 ? seqColor(t) : `rgb(255,${Math.round(255 + 144 * t)},${Math.round(255 + 174 * t)})`;
}

function heatmap(matrix, stage, labels, small = false) {
  const flat = matrix.flat().filter((x) => x !== null);
  const m = Math.max(1e-9, ...flat.map(Math.abs));
  const table = el("table", { class: "heatmap", "data-stage": stage });
  if (!small) {
    const head = el("tr", {}, [el("th")]);
    labels.forEach((l) => head.appendChild(el("th", { text: l })));
    table.appendChild(head);
  }
  matrix.forEach((row, i) => {
    const tr = el("tr");
    if (!small) tr.appendChild(el("th", { text: labels[i] }));
    row.forEach((v, j) => {
      const td = el("td", { "data-row": String(i), "data-col": String(j) });
      if (v === null) { td.className = "masked"; td.setAttribute("data-value", "-inf"); td.title = `${labels[i]} \u2192 ${labels[j]}: -\u221e (masked)`; }
      else {
        td.setAttribute("data-value", String(v));
        td.style.background = stage === "softmax" ? seqColor(v) : divColor(v, m);
        td.title = `${labels[i]} \u2192 ${labels[j]}: ${fmt(v, 4)}`;
      }
      tr.appendChild(td);
    });
    table.appendChild(tr);
  });
  return table;
}

function strip(values) {
  const m = Math.max(1e-9, ...values.map(Math.abs));
  const s = el("span", { class: "strip" });
  values.forEach((v) => s.appendChild(el("span", { style: `background:${divColor(v, m)}`, title: fmt(v, 4) })));
  return s;
}

function bars(rows) {  // rows: [label, value, max, extraText, cls]
  const g = el("div", { class: "bars" });
  for (const [label, value, max, extra, cls] of rows) {
    g.appendChild(el("span", { class: "tok", text: label }));
    const w = max > 0 ? Math.min(100, (100 * Math.abs(value)) / max) : 0;
    g.appendChild(el("div", {}, [el("div", { class: `bar ${value < 0 ? "neg" : ""} ${cls || ""}`, style: `width:${w}%` })]));
    g.appendChild(el("span", { text: extra }));
  }
  return g;
}

// ------------------------------------------------------------------ rendering
const STAGE_TEXT = {
  raw: (a) => "raw scores q\u00b7k: how well each query (row) matches each key (column)",
  scaled: (a) => `scaled: raw \u00d7 1/\u221ad_head = raw \u00d7 ${fmt(a.scale, 4)}`,
  biased: () => "plus the position bias (ALiBi): farther keys get lower scores",
  masked: (a, m) => m.decoder_only ? "masked: the causal mask sets every later position to -\u221e (hatched), so a token sees only itself and earlier tokens"
    : "masked: an encoder-only model has no causal mask; only padding would be masked",
  softmax: () => "softmax: each row becomes probabilities that sum to 1: how much each token takes from each earlier one",
};

function renderPane(pane, r, m, idx) {
  $(".pane-title", pane).textContent = `${m.name}: ${m.decoder_only ? "decoder-only" : "encoder-only"}, ${m.n_layers} layers, ${m.n_heads} heads, d_model ${m.d_model}, ${m.position} positions${m.residual !== "plain" ? ", DenseFormer (" + m.residual + ")" : ""}${m.value_residual !== "none" ? ", value residual (" + m.value_residual + ")" : ""}`;
  const labels = r.tokens.map((t) => t.text);
  // 1. tokens
  const toks = $(".tokens", pane); toks.replaceChildren();
  r.tokens.forEach((t, i) => toks.appendChild(el("span", {
    class: "token" + (i >= r.tokens.length - state.generated ? " generated" : ""), "data-id": String(t.id),
  }, [document.createTextNode(t.text), el("small", { text: String(t.id) })])));
  // 2. embeddings
  const e = r.embeddings;
  $(".embed-caption", pane).textContent = `Each token id picks a row of the token embedding table (${e.d_model} numbers; the first ${e.dims_shown} are drawn). ` +
    (e.pos ? `A ${e.position} position vector is added, giving the input of block 1.` : `No position vector is added here (${e.position}: ${e.position === "rope" ? "positions rotate the queries and keys inside attention" : e.position === "alibi" ? "positions enter as a bias on the attention scores" : "no positions"}).`);
  const et = el("table", { class: "data" }, [el("tr", {}, ["token", "token emb.", "|tok|", ...(e.pos ? ["position emb.", "|pos|"] : []), "sum", "|sum|"].map((h) => el("th", { text: h })))]);
  r.tokens.forEach((t, i) => et.appendChild(el("tr", {}, [
    el("td", { class: "tok", text: t.text }), el("td", {}, [strip(e.tok[i])]), el("td", { text: fmt(e.tok_norm[i], 2) }),
    ...(e.pos ? [el("td", {}, [strip(e.pos[i])]), el("td", { text: fmt(e.pos_norm[i], 2) })] : []),
    el("td", {}, [strip(e.sum[i])]), el("td", { text: fmt(e.sum_norm[i], 2) })])));
  $(".embeddings", pane).replaceChildren(et);
  // 3. attention
  const a = r.attention;
  $(".attn-where", pane).textContent = `(layer ${a.layer + 1}, head ${a.head + 1}, mixer ${a.mixer})`;
  const stages = $(".stages", pane); stages.replaceChildren();
  const heads = $(".heads", pane); heads.replaceChildren();
  if (!a.available) {
    $(".attn-caption", pane).textContent = a.note;
  } else {
    $(".attn-caption", pane).textContent = "Each head turns every token into a query (q), a key (k) and a value (v). From scores to probabilities, left to right:";
    for (const [name, mat] of Object.entries(a.stages)) {
      stages.appendChild(el("div", { class: "stage" }, [
        el("div", { class: "stage-title", text: name }), heatmap(mat, name, labels),
        el("div", { class: "caption", text: STAGE_TEXT[name](a, m), style: "max-width:260px" })]));
    }
    a.heads.forEach((mat, h) => {
      const t = el("div", { class: "head-thumb" + (h === a.head ? " selected" : ""), "data-head": String(h), title: `head ${h + 1}` },
        [heatmap(mat, "softmax", labels, true)]);
      t.addEventListener("click", () => { $("#head").value = String(h); refresh(); });
      heads.appendChild(t);
    });
  }
  const ex = r.extras[a.layer] || {};
  const notes = [];
  if (ex.dwa_alpha) notes.push(`DenseFormer: after this block the stream is a weighted average of earlier streams (sources ${ex.dwa_sources.join(", ")}; weights ${ex.dwa_alpha.map((x) => fmt(x, 3)).join(", ")}).`);
  if (ex.value_mix) notes.push(`Value residual: this layer's values are ${fmt(ex.value_mix[0], 2)} \u00d7 layer 1's values + ${fmt(ex.value_mix[1], 2)} \u00d7 its own.`);
  $(".layer-extras", pane).textContent = notes.join(" ");
  // 4. residual stream
  const norms = r.residual.norms;  // [n_layers + 1][seq]
  const rt = el("table", { class: "data residual-table" }, [el("tr", {}, [el("th", { text: "entering" }), ...labels.map((l) => el("th", { text: l }))])]);
  const mx = Math.max(...norms.flat());
  norms.forEach((row, i) => rt.appendChild(el("tr", {}, [el("td", { text: i < norms.length - 1 ? `block ${i + 1}` : "final norm" }),
    ...row.map((v) => el("td", { text: fmt(v, 1), style: `background:${seqColor(v / mx)}`, "data-value": String(v) }))])));
  $(".residual", pane).replaceChildren(rt);
  // 5. MLP
  const mlp = r.mlp;
  $(".mlp-where", pane).textContent = `(layer ${mlp.layer + 1}, last token)`;
  if (mlp.note) { $(".mlp-caption", pane).textContent = mlp.note; $(".mlp", pane).replaceChildren(); }
  else {
    $(".mlp-caption", pane).textContent = `Each position goes alone through up-projection \u2192 activation \u2192 down-projection (${mlp.d_ff} hidden units). The ${mlp.units.length} strongest activations of the last token:`;
    const mm = Math.max(...mlp.values.map(Math.abs));
    $(".mlp", pane).replaceChildren(bars(mlp.units.map((u, i) => [`unit ${u}`, mlp.values[i], mm, fmt(mlp.values[i], 3)])));
  }
  // 6. next token
  const n = r.next;
  $(".next-caption", pane).textContent = `Logits \u2192 divided by the temperature (${fmt(n.temperature, 2)}${n.temperature === 0 ? ": greedy" : ""}) \u2192 top-k ${n.top_k || "off"}, top-p ${fmt(n.top_p, 2)} \u2192 softmax over ${n.mode === "full" ? "the full vocabulary" : "the 50 largest logits only (the reference tool's approximation)"}. ${n.n_kept} of ${n.n_candidates} candidates kept; the ${n.candidates.length} most likely:`;
  const nt = el("table", { class: "data next-table" }, [el("tr", {}, ["token", "logit", "/ T", "probability", ""].map((h) => el("th", { text: h })))]);
  const pmax = Math.max(...n.candidates.map((c) => c.prob));
  n.candidates.forEach((c) => nt.appendChild(el("tr", { class: c.kept ? "" : "dropped", "data-id": String(c.id), "data-prob": String(c.prob) }, [
    el("td", { class: "tok", text: c.text }), el("td", { text: fmt(c.logit, 3) }), el("td", { text: fmt(c.scaled, 3) }),
    el("td", { text: c.prob.toFixed(4) }),
    el("td", { style: "width:120px" }, [el("div", { class: `bar ${c.kept ? "" : "dropped"}`, style: `width:${pmax > 0 ? 100 * c.prob / pmax : 0}%` })])])));
  $(".next", pane).replaceChildren(nt);
}

function panes() {
  const wanted = state.compare ? state.info.models.length : 1;
  const root = $("#panes");
  root.classList.toggle("compare", wanted > 1);
  while (root.children.length < wanted) {
    const p = $("#pane-template").content.firstElementChild.cloneNode(true);
    p.setAttribute("data-model", String(root.children.length));
    root.appendChild(p);
  }
  while (root.children.length > wanted) root.lastElementChild.remove();
  return [...root.children];
}

let pending = null;
async function refresh() {
  const s = settings();
  $("#temperature-value").textContent = s.temperature.toFixed(2);
  $("#top-p-value").textContent = s.top_p.toFixed(2);
  const token = (pending = {});
  state.busy++;
  try {
    const ps = panes();
    const results = await Promise.all(ps.map((_, i) => {
      const m = state.info.models[i];
      return api("/api/forward", { ...s, model: i, layer: Math.min(s.layer, m.n_layers - 1), head: Math.min(s.head, m.n_heads - 1) });
    }));
    if (token !== pending) return;  // a newer request is on its way
    results.forEach((r, i) => renderPane(ps[i], r, state.info.models[i], i));
    state.last = results;
    showError("");
  } catch (err) {
    if (token === pending) showError(err.message);
  } finally {
    state.busy--;
    document.body.setAttribute("data-busy", String(state.busy));
  }
}

async function generate() {
  const s = settings();
  const steps = Number($("#steps").value) || 1;
  state.busy++;
  try {
    const r = await api("/api/generate", { text: s.text, steps, temperature: s.temperature, top_k: s.top_k, top_p: s.top_p, mode: s.mode, seed: state.seed++ });
    $("#prompt").value = r.text;
    state.generated += r.steps.length;
    const log = $(".generation", $("#panes").firstElementChild);
    log.replaceChildren(...r.steps.map((st) => el("div", { class: "gen-step", "data-id": String(st.id),
      text: `position ${st.position}: chose ${st.token} (p = ${st.prob.toFixed(3)}) among ${st.candidates.slice(0, 5).map((c) => `${c.text} ${c.prob.toFixed(2)}`).join(", ")}` })));
    state.lastGenerate = r;
    showError("");
  } catch (err) {
    showError(err.message);
  } finally {
    state.busy--;
  }
  await refresh();
}

// ------------------------------------------------------------------ guided tour
function tourPages() {
  const m = state.info.models[0];
  const kind = m.decoder_only ? "a decoder-only transformer: it reads the text left to right and predicts the next token from the ones before it"
    : "an encoder-only transformer: every token sees the whole text, in both directions";
  return [
    ["What you are looking at", "input", `${m.name} is ${kind}. Type text in the box; every picture below updates as you type.`],
    ["Tokens", "tokens", m.tokenizer === "bytes" ? "The text is cut into tokens. This model reads bytes: each character (each UTF-8 byte) is one token, shown with its id." : "The text is a list of token ids; each is one token."],
    ["Embeddings", "embeddings", `Each token id selects a row of numbers (a vector of ${m.d_model}) from a learned table. Where the model uses learned or sinusoidal positions, a position vector is added, so the same letter at two places looks different.`],
    ["Queries, keys and values", "attention", `In each of the ${m.n_layers} layers, each of the ${m.n_heads} heads makes three vectors per token: a query (what am I looking for), a key (what do I contain) and a value (what do I pass on). The raw score of a pair is query \u00b7 key, then it is scaled by 1/\u221a(head size) so the numbers stay in a sensible range.`],
    [m.decoder_only ? "The causal mask" : "No mask", "attention", m.decoder_only ? "A token may not look at later tokens: the causal mask sets their scores to -\u221e (the hatched cells above the diagonal). Softmax then turns each row into probabilities that sum to 1. The value vectors are averaged with these weights." : "An encoder-only model has no causal mask: each row of scores covers the whole text. Softmax turns each row into probabilities that sum to 1."],
    ["Residual stream", "residual", "Each block adds what attention and the MLP computed to a running vector per token: the residual stream. The table shows how long that vector is entering each block." + (m.residual !== "plain" ? " This model is a DenseFormer: after each block the stream is a learned weighted average of all earlier streams." : "") + (m.value_residual !== "none" ? " It also has a value residual: later layers mix the first layer's values into their own." : "")],
    ["MLP", "mlp", "After attention, each token goes alone through a small two-layer network (the MLP): widen, apply a non-linearity, narrow again. The bars are the strongest hidden units for the last token."],
    ["Next-token probabilities", "next", "The final vector of the last token is multiplied by the vocabulary table to give one score (logit) per token. Dividing by the temperature sharpens (below 1) or flattens (above 1) them; top-k keeps the k best, top-p the smallest set reaching probability p; softmax gives the probabilities. By default this runs over the whole vocabulary; the reference tool (Transformer Explainer) uses only the 50 largest logits, available in the menu."],
    ["Generation", "generate", "Generate draws a token from those probabilities, appends it to the text and runs the model again: one token at a time."],
  ];
}
let tourAt = 0;
function showTour(i) {
  const pages = tourPages();
  tourAt = Math.max(0, Math.min(pages.length - 1, i));
  const [title, target, text] = pages[tourAt];
  $("#tour-title").textContent = title;
  $("#tour-text").textContent = text;
  $("#tour-count").textContent = `${tourAt + 1} / ${pages.length}`;
  document.querySelectorAll(".tour-focus").forEach((e) => e.classList.remove("tour-focus"));
  const focus = document.querySelector(`[data-tour="${target}"]`);
  if (focus) { focus.classList.add("tour-focus"); focus.scrollIntoView({ block: "nearest" }); }
  $("#tour").hidden = false;
}

// ------------------------------------------------------------------ start
async function start() {
  try { state.info = await api("/api/info"); } catch (err) { showError(err.message); return; }
  const ms = state.info.models;
  $("#model-line").textContent = ms.map((m) => m.name).join("  vs  ");
  $("#hint").textContent = `(${ms[0].hint}; at most ${ms[0].max_seq_len} tokens)`;
  const maxL = Math.max(...ms.map((m) => m.n_layers)), maxH = Math.max(...ms.map((m) => m.n_heads));
  $("#layer").replaceChildren(...Array.from({ length: maxL }, (_, i) => el("option", { value: String(i), text: String(i + 1) })));
  $("#head").replaceChildren(...Array.from({ length: maxH }, (_, i) => el("option", { value: String(i), text: String(i + 1) })));
  if (ms.length > 1) $("#compare-toggle").disabled = false;
  if (ms[0].tokenizer !== "bytes") $("#prompt").value = "1 2 3";
  let timer = null;
  const soon = () => { clearTimeout(timer); timer = setTimeout(refresh, 150); };
  $("#prompt").addEventListener("input", () => { state.generated = 0; soon(); });
  for (const id of ["#layer", "#head", "#mode", "#top-k", "#steps"]) $(id).addEventListener("change", refresh);
  for (const id of ["#temperature", "#top-p"]) $(id).addEventListener("input", soon);
  $("#generate").addEventListener("click", generate);
  $("#compare-toggle").addEventListener("click", () => {
    state.compare = !state.compare;
    $("#compare-toggle").classList.toggle("on", state.compare);
    refresh();
  });
  $("#tour-start").addEventListener("click", () => showTour(0));
  $("#tour-next").addEventListener("click", () => showTour(tourAt + 1));
  $("#tour-prev").addEventListener("click", () => showTour(tourAt - 1));
  $("#tour-close").addEventListener("click", () => { $("#tour").hidden = true; document.querySelectorAll(".tour-focus").forEach((e) => e.classList.remove("tour-focus")); });
  await refresh();
  document.body.setAttribute("data-ready", "1");
}
start();
