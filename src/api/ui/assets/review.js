// The review queue page: one example at a time from GET /v1/tasks/{task}/review_queue, with what
// sw2s knows about it (GET …/examples/{id}); a number key or a click sets the gold label
// (PUT …/examples/{id}/gold) and moves on. With `?order=sample` it offers a fair random sample
// instead, so that the gold stays representative of the task; each label says which order
// picked it (`picked`: random or review).
"use strict";
const TASK = document.body.dataset.task;
const LABELS = JSON.parse(document.body.dataset.labels);
const base = `/v1/tasks/${encodeURIComponent(TASK)}`;
// `priority` or `sample`, as the server read the page's `?order=`.
const ORDER = document.body.dataset.order;
let queue = [];
let pos = 0;
let current = null;
let busy = false;
const skipped = new Set();

async function api(path, options = {}) {
  const response = await fetch(base + path, { headers: { "content-type": "application/json" }, ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : response.statusText);
  return body;
}

function esc(s) { const d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; }
function num(x, d = 2) { return x == null ? "–" : Number(x).toFixed(d); }
function showError(e) { const el = document.getElementById("error"); el.textContent = String(e.message || e); el.hidden = false; }

async function load() {
  const q = await api(`/review_queue?limit=50&order=${ORDER}`);
  queue = q.items.filter((i) => !skipped.has(i.id));
  pos = 0;
  await show();
}

async function show() {
  const item = queue[pos];
  document.getElementById("item").hidden = !item;
  document.getElementById("empty").hidden = !!item;
  current = item || null;
  if (!item) { document.body.dataset.ready = "empty"; return; }
  const e = await api(`/examples/${encodeURIComponent(item.id)}`);
  document.getElementById("position").textContent = `${item.id} · ${pos + 1} of ${queue.length} in this batch of the queue`;
  document.getElementById("text").textContent = e.text;
  document.getElementById("reason").textContent = item.reason;
  document.getElementById("choices").innerHTML = LABELS.map((l, i) =>
    `<button data-label="${esc(l)}"><kbd>${i + 1}</kbd> ${esc(l)}</button>`).join("") + `<button data-skip="1"><kbd>s</kbd> skip</button>`;
  const p = e.prediction, d = e.decision;
  const facts = [
    ["Weak aggregate", e.weak_aggregate && e.weak_aggregate.label],
    ["Refined weak label", e.refined && e.refined.label],
    ["Strong prediction", p ? `${p.label} (P(IK) ${num(p.p_ik)}, ${p.p_ik_source}, v${p.model_version})` : "no model version yet"],
    ["Decision", d ? `${d.label ?? d.suggested_label ?? "none"} from ${d.source}${d.confidence != null ? `, confidence ${num(d.confidence)}` : ""}` : "–"],
  ];
  document.querySelector("#facts tbody").innerHTML = facts.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v ?? "–")}</td></tr>`).join("");
  document.querySelector("#weak tbody").innerHTML = e.weak_labels.map((w) =>
    `<tr><td>${esc(w.source)}</td><td>${esc(w.label ?? Object.entries(w.scores).map(([l, s]) => `${l} ${num(s)}`).join(", "))}</td><td class="num">${num(w.confidence)}</td></tr>`).join("")
    || `<tr><td colspan="3" class="muted">No weak labels.</td></tr>`;
  document.querySelector("#neighbours tbody").innerHTML = e.neighbours.map((n) =>
    `<tr><td>${esc(n.text)}</td><td>${esc(n.gold_label ? n.gold_label + " (gold)" : n.decision_label ?? (n.weak && n.weak.label) ?? "–")}</td><td class="num">${num(n.similarity)}</td></tr>`).join("")
    || `<tr><td colspan="3" class="muted">No neighbours yet.</td></tr>`;
  document.body.dataset.ready = item.id;
}

async function label(name) {
  if (!current || busy) return;
  busy = true;
  const id = current.id;
  try {
    // The queue says how it picked the example; sent back, it keeps hard-first gold out of
    // the task's checks.
    await api(`/examples/${encodeURIComponent(id)}/gold`, { method: "PUT", body: JSON.stringify({ label: name, picked: current.picked }) });
    document.getElementById("status").textContent = `${id} → ${name}`;
    await next();
  } catch (e) { showError(e); } finally { busy = false; }
}

async function next() {
  pos += 1;
  if (pos >= queue.length) await load(); else await show();
}

async function skip() {
  if (!current || busy) return;
  busy = true;
  try { skipped.add(current.id); await next(); } catch (e) { showError(e); } finally { busy = false; }
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const n = Number(event.key);
  if (Number.isInteger(n) && n >= 1 && n <= LABELS.length) { event.preventDefault(); label(LABELS[n - 1]); }
  else if (event.key === "s" || event.key === "ArrowRight") { event.preventDefault(); skip(); }
});
document.addEventListener("click", (event) => {
  const b = event.target.closest("button");
  if (!b) return;
  if (b.dataset.label) label(b.dataset.label);
  if (b.dataset.skip) skip();
});

load().catch(showError);
