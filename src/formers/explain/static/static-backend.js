// formers explain, static export: answers the page's API calls in the browser by running
// model.onnx with onnxruntime-web (wasm), so the site needs no server beyond a static file server.
// The numbers follow formers/explain/api.py and formers/explain/sampling.py.
"use strict";

(function () {
  const STAGES = ["raw", "scaled", "biased", "masked", "softmax"];
  let meta = null, session = null;

  async function init() {
    if (session) return;
    meta = await (await fetch("model.json")).json();
    ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
    ort.env.wasm.numThreads = 1;
    session = await ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] });
  }

  function fail(msg) { throw new Error(msg); }

  function label(i) {
    if (meta.info.tokenizer !== "bytes") return String(i);
    const names = { 256: "<bos>", 257: "<eos>", 258: "<pad>", 10: "\u21b5", 32: "\u2423", 9: "\u21e5" };
    if (i in names) return names[i];
    return i >= 33 && i < 127 ? String.fromCharCode(i) : "<0x" + i.toString(16).toUpperCase().padStart(2, "0") + ">";
  }
  function encode(text) {
    if (meta.info.tokenizer === "bytes") return [...new TextEncoder().encode(text)];
    const ids = text.trim().split(/\s+/).filter((t) => t).map(Number);
    if (ids.some((i) => !Number.isInteger(i) || i < 0 || i >= meta.info.vocab_size)) fail(meta.info.hint);
    return ids;
  }
  function decode(ids) {
    if (meta.info.tokenizer !== "bytes") return ids.join(" ");
    return new TextDecoder().decode(new Uint8Array(ids.filter((i) => i < 256)));
  }
  function tokens(body, room) {
    const ids = body.ids || (body.text ? encode(body.text) : fail("the text is empty"));
    if (!ids.length) fail("the text gives no tokens");
    const max = meta.info.max_seq_len;
    if (ids.length > max - room) fail(`the text is ${ids.length} tokens long; this model reads at most ${max} tokens: shorten it`);
    return ids;
  }
  async function run(ids) {
    const t = new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
    return session.run({ ids: t });
  }
  const num = (x) => (Number.isFinite(x) ? x : null);
  function rows(t, offset, n, m) {  // n x m matrix from a flat float array
    const out = [];
    for (let i = 0; i < n; i++) out.push(Array.from(t.data.subarray(offset + i * m, offset + (i + 1) * m), num));
    return out;
  }
  const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

  // ---------------------------------------------------------------- sampling (sampling.py)
  function distribution(logits, temperature, topK, topP, mode) {
    const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
    const n = mode === "full" ? order.length : Math.min(50, order.length);
    const ids = order.slice(0, n), top = ids.map((i) => logits[i]);
    if (temperature === 0) {
      const probs = top.map((_, r) => (r === 0 ? 1 : 0));
      return { ids, logits: top, scaled: top.slice(), kept: probs.map((p) => p > 0), probs };
    }
    const scaled = top.map((x) => x / temperature);
    let f = scaled.slice();
    if (topK > 0 && topK < n) {
      if (mode === "full") { const kth = scaled[topK - 1]; f = f.map((x) => (x < kth ? -Infinity : x)); }
      else f = f.map((x, r) => (r >= topK ? -Infinity : x));
    }
    const soft = (v) => { const m = Math.max(...v); const e = v.map((x) => Math.exp(x - m)); const s = e.reduce((a, b) => a + b, 0); return e.map((x) => x / s); };
    if (topP < 1) {
      const p = soft(f);
      let before = 0;
      f = f.map((x, r) => { const drop = r > 0 && before >= topP - 1e-6; before += p[r]; return drop ? -Infinity : x; });
    }
    const probs = soft(f);
    return { ids, logits: top, scaled, kept: f.map(Number.isFinite), probs };
  }
  function head(d, n) {
    return d.ids.slice(0, n).map((id, r) => ({ id, text: label(id), logit: d.logits[r], scaled: d.scaled[r], kept: d.kept[r], prob: d.probs[r] }));
  }
  function sampling(body) {
    const s = { temperature: body.temperature ?? 0.8, top_k: body.top_k ?? 0, top_p: body.top_p ?? 1, mode: body.mode || "full" };
    if (!(s.temperature >= 0)) fail("temperature must be a number in [0, 100] (0 = greedy)");
    if (!(s.top_p > 0 && s.top_p <= 1)) fail("top_p must be a number in (0, 1]");
    return s;
  }
  function lastLogits(out, T) {
    const V = meta.info.vocab_size;
    return Array.from(out.logits.data.subarray((T - 1) * V, T * V));
  }

  // ---------------------------------------------------------------- the API
  async function forward(body) {
    const info = meta.info, ids = tokens(body, 0), T = ids.length, L = info.n_layers, H = info.n_heads;
    const layer = Math.min(body.layer || 0, L - 1), hd = Math.min(body.head || 0, H - 1);
    const out = await run(ids), d = info.d_model, n = Math.min(16, d);
    const tok = rows(out.embed_tok, 0, T, d), pos = out.embed_pos ? rows(out.embed_pos, 0, T, d) : null;
    const sum = tok.map((v, i) => (pos ? v.map((x, j) => x + pos[i][j]) : v));
    const emb = { d_model: d, dims_shown: n, position: info.position, tok: tok.map((v) => v.slice(0, n)), tok_norm: tok.map(norm),
      sum: sum.map((v) => v.slice(0, n)), sum_norm: sum.map(norm) };
    if (pos) Object.assign(emb, { pos: pos.map((v) => v.slice(0, n)), pos_norm: pos.map(norm) });
    const attn = { layer, head: hd, mixer: meta.layers[layer].mixer, available: !!out[`block_${layer}_attn_softmax`], note: meta.layers[layer].note, recorded: [] };
    if (attn.available) {
      attn.stages = {};
      for (const s of STAGES) { const t = out[`block_${layer}_attn_${s}`]; if (t) attn.stages[s] = rows(t, hd * T * T, T, T); }
      attn.heads = Array.from({ length: H }, (_, h) => rows(out[`block_${layer}_attn_softmax`], h * T * T, T, T));
      attn.scale = 1 / Math.sqrt(info.head_dim);
    }
    const extras = {};
    for (let i = 0; i < L; i++) {
      const e = {};
      if (out[`block_${i}_dwa_alpha`]) { e.dwa_alpha = Array.from(out[`block_${i}_dwa_alpha`].data); e.dwa_sources = meta.layers[i].dwa_sources || []; }
      if (out[`block_${i}_value_mix`]) e.value_mix = Array.from(out[`block_${i}_value_mix`].data);
      extras[i] = e;
    }
    const sn = out.stream_norms.data, norms = Array.from({ length: L + 1 }, (_, i) => Array.from(sn.subarray(i * T, (i + 1) * T)));
    const mlp = { layer, position: T - 1 }, act = out[`block_${layer}_mlp_act`];
    if (act) {
      const dff = act.dims[2], v = Array.from(act.data.subarray((T - 1) * dff, T * dff));
      const units = Array.from(v.keys()).sort((a, b) => Math.abs(v[b]) - Math.abs(v[a])).slice(0, Math.min(32, dff));
      Object.assign(mlp, { d_ff: dff, units, values: units.map((u) => v[u]) });
    } else mlp.note = `the feed-forward ${meta.layers[layer].ffn} has no up/down projection pair to show`;
    const s = sampling(body), dist = distribution(lastLogits(out, T), s.temperature, s.top_k, s.top_p, s.mode);
    return { model: info.name, tokens: ids.map((i) => ({ id: i, text: label(i) })), embeddings: emb, attention: attn, extras,
      layers: meta.layers, residual: { norms }, mlp,
      next: { ...s, candidates: head(dist, 20), n_kept: dist.kept.filter((k) => k).length, n_candidates: dist.ids.length } };
  }

  function rng(seed) {  // mulberry32: the static site's draws (not torch's generator)
    let a = seed >>> 0;
    return () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  }
  async function generate(body) {
    const steps = body.steps || 1;
    if (!(steps >= 1 && steps <= 32)) fail("steps must be an integer in [1, 32]");
    let ids = tokens(body, steps);
    const s = sampling(body), draw = rng(body.seed || 0), out = [];
    for (let k = 0; k < steps; k++) {
      const d = distribution(lastLogits(await run(ids), ids.length), s.temperature, s.top_k, s.top_p, s.mode);
      let u = draw(), r = 0;
      while (r < d.probs.length - 1 && (u -= d.probs[r]) > 0) r++;
      while (d.probs[r] === 0 && r > 0) r--;
      out.push({ position: ids.length, id: d.ids[r], token: label(d.ids[r]), prob: d.probs[r], candidates: head(d, 10) });
      ids = ids.concat([d.ids[r]]);
    }
    return { model: meta.info.name, steps: out, ids, text: decode(ids), ...s };
  }

  window.FORMERS_BACKEND = async function (path, body) {
    await init();
    if (path === "/api/info") return { models: [meta.info], sampling_modes: ["full", "top50"], stages: STAGES, limits: meta.limits };
    if (path === "/api/forward") return forward(body);
    if (path === "/api/generate") return generate(body);
    fail(`not found: ${path}`);
  };
})();
