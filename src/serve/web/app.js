// The page of `ser-engine serve`: runs, one run (live curves, confusion heat-map),
// compare, try a model (upload, microphone, live). No libraries, no network but this server.
'use strict';

// The charts' palette (src/chart/: Okabe–Ito without its yellow).
const COLORS = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#000000'];
const $app = document.getElementById('app');
let cleanup = [];

function el(tag, attrs, ...kids) {
  const svg = ['svg', 'line', 'polyline', 'circle', 'text', 'rect', 'g', 'path'].includes(tag);
  const e = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === 'text') e.textContent = v;
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
  }
  for (const k of kids.flat(Infinity)) if (k !== null && k !== undefined) e.append(k);
  return e;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: 'same-origin' }, opts || {}));
  let body;
  try { body = await r.json(); } catch (_) { body = {}; }
  if (!r.ok) throw new Error(body.error || (r.status + ' ' + r.statusText));
  return body;
}

const pct = (v) => (v === null || v === undefined || Number.isNaN(v)) ? '' : (100 * v).toFixed(1) + '%';
const enc = (id) => id.split('/').map(encodeURIComponent).join('/');
const fmtDate = (s) => s ? new Date(s * 1000).toISOString().slice(0, 16).replace('T', ' ') : '';

// ---- charts: SVG drawn by the server (src/chart/), the same code that draws the PNGs ------

// An SVG document as elements (the page's tests look inside it).
function svgNode(text) {
  const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
  return document.importNode(doc.documentElement, true);
}

// Fetches an SVG chart and puts it into `box`.
// Returns false when there is none to show (404, an error, no server).
async function loadChart(box, url) {
  let r;
  try { r = await fetch(url, { credentials: 'same-origin' }); } catch (e) {
    box.replaceChildren(el('p', { class: 'err', text: 'chart: ' + e.message }));
    return false;
  }
  if (!r.ok) {
    let msg = r.status + ' ' + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    box.replaceChildren(el('p', { class: r.status === 404 ? 'note' : 'err', text: msg }));
    return false;
  }
  box.replaceChildren(svgNode(await r.text()));
  return true;
}

// Redraws a chart at most once at a time; a request during a fetch redraws once more after.
function chartUpdater(box, url) {
  let busy = false, again = false;
  return async function update() {
    if (busy) { again = true; return; }
    busy = true;
    try { await loadChart(box, url); } finally { busy = false; }
    if (again) { again = false; update(); }
  };
}

// ---- runs -------------------------------------------------------------------------------

let sortKey = 'date', sortDir = -1;
const COLS = [
  ['id', 'run', r => r.id],
  ['state', 'state', r => r.state],
  ['epoch', 'epoch', r => r.epoch || 0],
  ['wa', 'best WA', r => r.best ? r.best.val_accuracy : -1],
  ['ua', 'UA', r => r.best ? r.best.val_unweighted_accuracy : -1],
  ['f1', 'macro-F1', r => r.best ? r.best.val_macro_f1 : -1],
  ['lr', 'lr / schedule', r => r.lr || 0],
  ['recipe', 'recipe', r => r.recipe || ''],
  ['data', 'corpus', r => r.data || ''],
  ['device', 'device', r => r.device || ''],
  ['date', 'date', r => r.date || 0],
];

async function viewRuns() {
  const box = el('div', {}, el('h2', { text: 'Runs' }));
  const sel = new Set();
  const cmp = el('button', { id: 'compare-selected', on: { click: () => { location.hash = '#/compare?ids=' + [...sel].map(encodeURIComponent).join(','); } } }, 'Compare selected');
  const tableBox = el('div');
  box.append(el('div', { class: 'row' }, cmp), tableBox);
  $app.replaceChildren(box);
  async function refresh() {
    let runs;
    try { runs = (await api('/api/runs')).runs; } catch (e) { tableBox.replaceChildren(el('p', { class: 'err', text: e.message })); return; }
    const col = COLS.find(c => c[0] === sortKey);
    runs.sort((a, b) => { const x = col[2](a), y = col[2](b); return (x < y ? -1 : x > y ? 1 : 0) * sortDir; });
    const head = el('tr', {}, el('th', { class: 'l' }, ''), COLS.map(([k, name]) => el('th', {
      class: k === 'id' || k === 'data' ? 'l' : null, 'data-key': k,
      on: { click: () => { if (sortKey === k) sortDir = -sortDir; else { sortKey = k; sortDir = 1; } refresh(); } },
    }, name + (k === sortKey ? (sortDir > 0 ? ' ▲' : ' ▼') : ''))));
    const rows = runs.map(r => {
      const cb = el('input', { type: 'checkbox', on: { change: e => { if (e.target.checked) sel.add(r.id); else sel.delete(r.id); } } });
      cb.checked = sel.has(r.id);
      const ep = r.kind === 'sweep' ? `${r.plan_kind || 'sweep'}: ${r.trials || '?'} × ${r.folds || '?'}` : `${r.epoch || 0} of ${r.epochs || '?'}`;
      return el('tr', { 'data-id': r.id },
        el('td', { class: 'l' }, cb),
        el('td', { class: 'l' }, el('a', { href: '#/run/' + enc(r.id), text: r.id })),
        el('td', { class: 'state-' + r.state, text: r.state + (r.pid ? ` (pid ${r.pid})` : '') }),
        el('td', { text: ep }),
        el('td', { text: r.best ? pct(r.best.val_accuracy) : '' }),
        el('td', { text: r.best ? pct(r.best.val_unweighted_accuracy) : '' }),
        el('td', { text: r.best ? pct(r.best.val_macro_f1) : '' }),
        el('td', { text: r.lr ? `${r.lr} / ${r.schedule || ''}` : '' }),
        el('td', { class: 'recipe', text: r.recipe || '—' }),
        el('td', { class: 'l', text: r.data || '' }),
        el('td', { text: r.device || '' }),
        el('td', { text: fmtDate(r.date) }));
    });
    tableBox.replaceChildren(runs.length
      ? el('table', { id: 'runs-table' }, head, rows)
      : el('p', { id: 'runs-table', text: 'No runs yet under --runs. Train one: ser-engine train' }));
  }
  await refresh();
  const t = setInterval(refresh, 3000);
  cleanup.push(() => clearInterval(t));
}

// ---- one run ----------------------------------------------------------------------------

function perClass(cm, labels) {
  return labels.map((l, i) => {
    const tp = cm[i][i];
    const support = cm[i].reduce((a, b) => a + b, 0);
    const predicted = cm.reduce((a, row) => a + row[i], 0);
    const p = predicted ? tp / predicted : null, r = support ? tp / support : null;
    const f1 = p !== null && r !== null && p + r > 0 ? 2 * p * r / (p + r) : null;
    return { label: l, precision: p, recall: r, f1, support };
  });
}

// A cell's colour by its share of its row (the diagonal: the class's recall), the formula of
// chart::heat_fill and chart::heat_ink in src/chart/mod.rs, which shade the PNG of
// `eval --confusion-png`: white to #1f5fa8, each channel round(255 + share × (c − 255)).
function heatFill(share) {
  const mix = c => Math.round(255 + share * (c - 255));
  return `rgb(${mix(31)}, ${mix(95)}, ${mix(168)})`;
}
const heatInk = share => share > 0.5 ? '#ffffff' : '#222222';

function heatmap(cm, labels) {
  return el('table', { class: 'heat', id: 'confusion' },
    el('tr', {}, el('th', { class: 'l', text: 'true \\ predicted' }), labels.map(l => el('th', { text: l }))),
    cm.map((row, i) => {
      const total = Math.max(1, row.reduce((a, b) => a + b, 0));
      return el('tr', {}, el('th', { class: 'l', text: labels[i] }), row.map((v) => {
        const td = el('td', { text: String(v) });
        const share = Math.min(1, Math.max(0, v / total));
        td.style.background = heatFill(share);
        td.style.color = heatInk(share);
        return td;
      }));
    }));
}

async function viewRun(id) {
  const d = await api('/api/runs/' + enc(id));
  if (d.kind === 'sweep') return viewSweep(d);
  const labels = d.config && d.config.labels || [];
  const metrics = d.metrics || [];
  const title = el('h2', { text: 'Run ' + d.id });
  const stateEl = el('span', { id: 'run-state', class: 'state-' + d.state, text: d.state });
  const chartsBox = el('div', { class: 'charts', id: 'charts' });
  const cmBox = el('div');
  const slider = el('input', { type: 'range', id: 'epoch-slider', min: 1, max: 1, value: 1 });
  const sliderLab = el('span');
  const csv = el('a', { href: '/api/runs/' + enc(d.id) + '/metrics.csv', download: 'metrics.csv', text: 'metrics.csv' });
  $app.replaceChildren(el('div', {}, title,
    el('div', { class: 'row' }, 'state: ', stateEl, ' · ', el('span', { id: 'epoch-count' }), ' · ', csv, ' · ', el('a', { href: '#/try?run=' + encodeURIComponent(d.id), text: 'try this model' })),
    chartsBox,
    el('h3', { text: 'Validation confusion matrix' }), el('div', { class: 'row' }, 'epoch ', slider, sliderLab), cmBox,
    el('h3', { text: 'Configuration' }), el('pre', { id: 'config', text: JSON.stringify(d.config, null, 2) })));

  function bestEpoch() { const b = metrics.filter(m => m.best); return b.length ? b[b.length - 1].epoch : null; }
  const redrawChart = chartUpdater(chartsBox, '/api/runs/' + enc(d.id) + '/chart.svg');
  function draw() {
    const best = bestEpoch();
    redrawChart();
    document.getElementById('epoch-count').textContent = `${metrics.length} epoch${metrics.length === 1 ? '' : 's'}`;
    const withCm = metrics.filter(m => m.val_confusion);
    if (!withCm.length) { cmBox.replaceChildren(el('p', { text: 'This run records no per-epoch confusion counts (written by an older ser-engine).' })); slider.disabled = true; return; }
    slider.disabled = false;
    slider.min = withCm[0].epoch; slider.max = withCm[withCm.length - 1].epoch;
    if (!slider.dataset.touched) slider.value = best || slider.max;
    showCm();
  }
  function showCm() {
    const m = metrics.find(m => m.epoch === +slider.value && m.val_confusion);
    if (!m) return;
    sliderLab.textContent = `${m.epoch}${m.epoch === bestEpoch() ? ' (best)' : ''} · WA ${pct(m.val_accuracy)} · UA ${pct(m.val_unweighted_accuracy)} · macro-F1 ${pct(m.val_macro_f1)}`;
    const pc = perClass(m.val_confusion, labels);
    cmBox.replaceChildren(heatmap(m.val_confusion, labels), el('h3', { text: 'Per class' }),
      el('table', { id: 'per-class' }, el('tr', {}, ['class', 'precision', 'recall', 'F1', 'support'].map(h => el('th', { text: h }))),
        pc.map(r => el('tr', {}, el('td', { class: 'l', text: r.label }), el('td', { text: pct(r.precision) }), el('td', { text: pct(r.recall) }), el('td', { text: pct(r.f1) }), el('td', { text: String(r.support) })))));
  }
  slider.addEventListener('input', () => { slider.dataset.touched = '1'; showCm(); });
  draw();
  const es = new EventSource('/api/runs/' + enc(d.id) + '/events?after=' + (metrics.length ? metrics[metrics.length - 1].epoch : 0));
  es.addEventListener('epoch', ev => {
    const r = JSON.parse(ev.data);
    if (!metrics.some(m => m.epoch === r.epoch)) { metrics.push(r); draw(); }
  });
  es.addEventListener('reset', () => { metrics.length = 0; draw(); });
  es.addEventListener('state', ev => { const s = JSON.parse(ev.data).state; stateEl.textContent = s; stateEl.className = 'state-' + s; });
  cleanup.push(() => es.close());
}

function viewSweep(d) {
  const box = el('div', {}, el('h2', { text: `${d.plan_kind || 'Sweep'} ${d.id}` }),
    el('div', { class: 'row' }, 'state: ', el('span', { class: 'state-' + d.state, text: d.state }), ` · corpus ${d.data || ''} · ${d.folds || '?'} folds`));
  const res = d.results || {};
  const rows = res.trials || res.rows || null;
  if (Array.isArray(rows) && rows.length) {
    const keys = Object.keys(rows[0]).filter(k => typeof rows[0][k] !== 'object');
    box.append(el('h3', { text: 'Results' }), el('table', { id: 'sweep-results' }, el('tr', {}, keys.map(k => el('th', { text: k }))),
      rows.map(r => el('tr', {}, keys.map(k => el('td', { text: typeof r[k] === 'number' ? (+r[k].toPrecision(4)).toString() : String(r[k]) }))))));
  }
  const chartBox = el('div', { class: 'charts', id: 'sweep-charts' });
  box.append(el('h3', { text: 'Chart' }), chartBox);
  loadChart(chartBox, '/api/runs/' + enc(d.id) + '/chart.svg');
  if ((d.files || []).includes('results.md')) {
    const pre = el('pre', { id: 'results-md' });
    fetch('/api/runs/' + enc(d.id) + '/files/results.md').then(r => r.text()).then(t => { pre.textContent = t; });
    box.append(el('h3', { text: 'results.md' }), pre);
  }
  const units = d.units || [];
  if (units.length) {
    box.append(el('h3', { text: 'Units' }), el('div', { class: 'row' }, el('a', { href: '#/compare?ids=' + units.map(encodeURIComponent).join(','), text: 'compare all units' })),
      el('ul', {}, units.map(u => el('li', {}, el('a', { href: '#/run/' + enc(u), text: u })))));
  }
  $app.replaceChildren(box);
}

// ---- compare ----------------------------------------------------------------------------

function flatten(o, pre, out) {
  for (const [k, v] of Object.entries(o || {})) {
    const key = pre ? pre + '.' + k : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = JSON.stringify(v);
  }
  return out;
}

async function viewCompare(query) {
  const ids = (query.get('ids') || '').split(',').filter(Boolean);
  if (!ids.length) {
    $app.replaceChildren(el('div', {}, el('h2', { text: 'Compare' }), el('p', { text: 'Tick runs in the runs table and press "Compare selected", or open a sweep and "compare all units".' })));
    return;
  }
  const runs = (await Promise.all(ids.map(id => api('/api/runs/' + enc(id)).catch(() => null)))).filter(r => r && r.kind === 'run');
  const flat = runs.map(r => flatten(r.config, '', {}));
  const keys = [...new Set(flat.flatMap(Object.keys))].filter(k => k !== 'ser_engine_version' && new Set(flat.map(f => f[k])).size > 1).sort();
  const best = r => { const b = (r.metrics || []).filter(m => m.best); return b[b.length - 1]; };
  const chartsBox = el('div', { class: 'charts', id: 'compare-charts' });
  if (runs.length) loadChart(chartsBox, '/api/compare.svg?ids=' + runs.map(r => encodeURIComponent(r.id)).join(','));
  $app.replaceChildren(el('div', {}, el('h2', { text: `Compare ${runs.length} runs` }),
    chartsBox,
    el('h3', { text: 'Options that differ, and the best epoch' }),
    el('table', { id: 'compare-table' },
      el('tr', {}, el('th', { class: 'l', text: 'run' }), keys.map(k => el('th', { text: k })), ['best epoch', 'WA', 'UA', 'macro-F1'].map(h => el('th', { text: h }))),
      runs.map((r, i) => { const b = best(r) || {}; return el('tr', {}, el('td', { class: 'l' }, el('a', { href: '#/run/' + enc(r.id), text: r.id })), keys.map(k => el('td', { text: flat[i][k] ?? '' })),
        el('td', { text: b.epoch ?? '' }), el('td', { text: pct(b.val_accuracy) }), el('td', { text: pct(b.val_unweighted_accuracy) }), el('td', { text: pct(b.val_macro_f1) })); }))));
}

// ---- try a model ------------------------------------------------------------------------

function bars(probs, id) {
  const entries = Object.entries(probs || {});
  const top = entries.reduce((a, b) => (b[1] > a[1] ? b : a), ['', -1])[0];
  return el('div', { class: 'bars', id }, entries.map(([l, p]) => {
    const bar = el('div', { class: 'bar' + (l === top ? ' top' : '') });
    bar.style.width = (100 * p).toFixed(1) + '%';
    return [el('span', { text: l }), el('div', {}, bar), el('span', { text: pct(p) })];
  }));
}

// Live mode's strip: the latest windows' labels, drawn here as each chunk's answer comes
// (an upload's timeline is the server's SVG, the picture of `predict --timeline-png`).
function liveStrip(windows, labels) {
  const W = 800, H = 60;
  const svg = el('svg', { id: 'live-strip', class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  if (!windows.length) return svg;
  const t0 = windows[0].start_s, dur = Math.max(windows[windows.length - 1].end_s - t0, 1);
  windows.forEach((w, i) => {
    const x = (w.start_s - t0) / dur * W, x2 = (w.end_s - t0) / dur * W;
    const k = labels.indexOf(w.label);
    const y = 4 + (i % 2) * 22;
    svg.append(el('rect', { x, y, width: Math.max(1, x2 - x - 1), height: 18, fill: w.silent ? '#e0e0e0' : COLORS[k % COLORS.length] }));
    if (x2 - x > 40) svg.append(el('text', { x: x + 3, y: y + 13, fill: '#fff', text: w.silent ? 'silent' : w.label }));
  });
  svg.append(el('text', { x: 4, y: H - 4, text: `the last ${dur.toFixed(1)} s` }));
  return svg;
}

function wavBytes(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const buf = new ArrayBuffer(44 + 2 * n), v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, 'RIFF'); v.setUint32(4, 36 + 2 * n, true); str(8, 'WAVE'); str(12, 'fmt ');
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true);
  v.setUint32(28, 2 * rate, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true); str(36, 'data'); v.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) for (const s of c) { v.setInt16(o, Math.max(-1, Math.min(1, s)) * 32767, true); o += 2; }
  return new Uint8Array(buf);
}

function pcm16(chunks) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const out = new Int16Array(n);
  let o = 0;
  for (const c of chunks) for (const s of c) out[o++] = Math.max(-1, Math.min(1, s)) * 32767;
  return new Uint8Array(out.buffer);
}

async function openMic(onBlock) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule('/pcm-worklet.js');
  const src = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, 'pcm-tap');
  node.port.onmessage = e => onBlock(e.data);
  src.connect(node);
  return { rate: ctx.sampleRate, stop: () => { node.port.onmessage = null; stream.getTracks().forEach(t => t.stop()); ctx.close(); } };
}

async function viewTry(query) {
  const runs = (await api('/api/runs')).runs.filter(r => r.kind === 'run' && r.epoch);
  const pick = el('select', { id: 'try-run' }, runs.map(r => el('option', { value: r.id, text: r.id })));
  if (query.get('run')) pick.value = query.get('run');
  const win = el('input', { id: 'try-window', type: 'number', min: 0.25, step: 0.25, placeholder: 'whole clip', size: 8 });
  const hop = el('input', { id: 'try-hop', type: 'number', min: 0.05, step: 0.05, placeholder: '= window', size: 8 });
  const file = el('input', { id: 'try-file', type: 'file', accept: 'audio/*,.wav,.flac,.mp3,.ogg' });
  const out = el('div', { id: 'try-result' });
  const recBtn = el('button', { id: 'record' }, 'Record');
  const liveBtn = el('button', { id: 'live' }, 'Live');
  const liveOut = el('div', { id: 'live-result' });
  let mic = null, live = null;
  const local = ['localhost', '127.0.0.1', '[::1]'].includes(location.hostname);
  $app.replaceChildren(el('div', {}, el('h2', { text: 'Try a model' }),
    el('div', { class: 'row' }, 'model ', pick, ' window (s) ', win, ' hop (s) ', hop),
    el('div', { class: 'row' }, 'upload ', file, recBtn, liveBtn),
    el('p', { class: 'note', text: 'Browsers give pages the microphone only over https or at localhost. ' + (local ? 'This page is at ' + location.host + ', so recording works.' : 'This page is not at localhost: recording will be refused.') + ' To use a server on another machine, forward its port and open the page at localhost: ssh -L 8000:127.0.0.1:8000 user@server, then open the URL it printed on this machine.' }),
    out, liveOut));
  async function send(bytes, name) {
    const q = new URLSearchParams({ run: pick.value, name });
    if (win.value) { q.set('window', win.value); if (hop.value) q.set('hop', hop.value); }
    out.replaceChildren(el('p', { text: 'classifying ' + name + '…' }));
    try {
      const t0 = performance.now();
      const r = await api('/api/predict?' + q, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: bytes });
      const ms = performance.now() - t0;
      const parts = [el('p', {}, name + ': ', el('span', { class: 'big', id: 'predict-label', text: r.label || '(silent)' }), ` · ${r.duration_s.toFixed(2)} s of audio · ${ms.toFixed(0)} ms`), bars(r.probabilities, 'predict-bars')];
      if (r.timeline_svg) {
        parts.push(el('h3', { id: 'timeline-head', text: `${r.windows.length} windows` }), el('div', { id: 'timeline', class: 'charts' }, svgNode(r.timeline_svg)));
      }
      out.replaceChildren(...parts);
    } catch (e) { out.replaceChildren(el('p', { class: 'err', id: 'predict-error', text: e.message })); }
  }
  file.addEventListener('change', async () => { const f = file.files[0]; if (f) { const b = await f.arrayBuffer(); send(new Uint8Array(b), f.name); } });
  recBtn.addEventListener('click', async () => {
    if (mic) {
      const m = mic; mic = null; m.stop(); recBtn.textContent = 'Record';
      const wav = wavBytes(m.chunks, m.rate);
      await send(wav, 'recording.wav');
      const a = el('a', { id: 'recording-download', download: 'recording.wav', href: URL.createObjectURL(new Blob([wav], { type: 'audio/wav' })), text: 'download the recording (16-bit WAV)' });
      a.wav = wav; // the bytes sent, for scripts that check the recording
      out.append(el('p', {}, a));
      return;
    }
    try {
      const chunks = [];
      const m = await openMic(b => chunks.push(b));
      mic = Object.assign(m, { chunks }); recBtn.textContent = 'Stop and classify';
    } catch (e) { out.replaceChildren(el('p', { class: 'err', text: 'microphone: ' + e.message })); }
  });
  liveBtn.addEventListener('click', async () => {
    if (live) { live.stop(); live = null; liveBtn.textContent = 'Live'; return; }
    const session = Math.random().toString(36).slice(2) + Date.now().toString(36);
    const history = [];
    let pending = [], busy = false, labels = [];
    try {
      const m = await openMic(b => pending.push(b));
      const tick = setInterval(async () => {
        if (busy || !pending.length) return;
        const chunk = pcm16(pending); pending = [];
        busy = true;
        const t0 = performance.now();
        try {
          const q = new URLSearchParams({ run: pick.value, session, rate: String(m.rate), window: win.value || '2' });
          const r = await api('/api/live?' + q, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: chunk });
          const ms = performance.now() - t0;
          if (r.buffering) { liveOut.replaceChildren(el('p', { text: 'listening…' })); return; }
          labels = Object.keys(r.probabilities || {});
          history.push({ start_s: r.start_s, end_s: r.end_s, label: r.label, silent: r.silent });
          liveOut.replaceChildren(el('p', {}, 'now: ', el('span', { class: 'big', id: 'live-label', text: r.silent ? '(silent)' : r.label }), ` · latency ${ms.toFixed(0)} ms (model ${r.latency_ms.toFixed(0)} ms)`),
            r.probabilities ? bars(r.probabilities, 'live-bars') : '', liveStrip(history.slice(-40).map(h => Object.assign({}, h, { start_s: h.end_s - 0.3 })), labels));
        } catch (e) { liveOut.replaceChildren(el('p', { class: 'err', text: e.message })); } finally { busy = false; }
      }, 300);
      live = { stop: () => { clearInterval(tick); m.stop(); fetch('/api/live?session=' + session, { method: 'DELETE', credentials: 'same-origin' }); } };
      liveBtn.textContent = 'Stop live';
    } catch (e) { liveOut.replaceChildren(el('p', { class: 'err', text: 'microphone: ' + e.message })); }
  });
  cleanup.push(() => { if (mic) mic.stop(); if (live) live.stop(); });
}

// ---- router -----------------------------------------------------------------------------

async function route() {
  cleanup.forEach(f => f()); cleanup = [];
  const h = location.hash.slice(1) || '/';
  const [path, qs] = h.split('?');
  const query = new URLSearchParams(qs || '');
  try {
    if (path.startsWith('/run/')) await viewRun(path.slice(5).split('/').map(decodeURIComponent).join('/'));
    else if (path === '/compare') await viewCompare(query);
    else if (path === '/try') await viewTry(query);
    else await viewRuns();
    document.getElementById('status').textContent = '';
  } catch (e) {
    $app.replaceChildren(el('p', { class: 'err', text: e.message }));
  }
}

window.addEventListener('hashchange', route);
route();
