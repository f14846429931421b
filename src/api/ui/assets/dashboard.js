// The task page: draws the task's dashboard (GET /v1/tasks/{task}/dashboard) with Chart.js and
// keeps it fresh while a job runs. Buttons call the public API.
"use strict";
const TASK = document.body.dataset.task;
const base = `/v1/tasks/${encodeURIComponent(TASK)}`;
const COLORS = { gold: "#c8960c", strong: "#2f6fde", weak_refined: "#2aa876", abstain: "#d9534f",
                 none: "#9aa1ad", undecided: "#c4c9d2", weak: "#8fd3b6", refined: "#2aa876", decision: "#2f6fde" };
const charts = {};
let lastJson = "";
let timer = null;

async function api(path, options = {}) {
  const response = await fetch(base + path, { headers: { "content-type": "application/json" }, ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : response.statusText);
  return body;
}

function showError(e) {
  const el = document.getElementById("error");
  el.textContent = String(e.message || e);
  el.hidden = false;
}

function pct(x) { return x == null ? "–" : (100 * x).toFixed(1) + "%"; }
function num(x, d = 3) { return x == null ? "–" : Number(x).toFixed(d); }
function esc(s) { const d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; }
function when(ms) { return ms ? new Date(ms).toLocaleString() : "–"; }

function draw(id, config) {
  config.options = { animation: false, responsive: true, maintainAspectRatio: true, ...(config.options || {}) };
  if (charts[id]) {
    charts[id].data = config.data;
    charts[id].options = config.options;
    charts[id].update();
  } else {
    charts[id] = new Chart(document.getElementById(id), config);
  }
}

function summary(d) {
  const t = d.task, r = d.report;
  const cards = [
    ["Examples", t.examples], ["Gold", t.gold_examples], ["Coverage", pct(r.coverage)],
    ["Active version", t.active_model_version ? "v" + t.active_model_version : "–"],
    ["τ", num(r.tau, 2)], ["Pending", t.pending],
  ];
  for (const [source, n] of Object.entries(t.decisions)) cards.push([source, n]);
  document.getElementById("summary").innerHTML = cards
    .map(([k, v]) => `<div class="card" data-card="${esc(k)}"><span class="muted">${esc(k)}</span><b>${esc(v)}</b></div>`).join("");
}

function shares(d) {
  const s = d.shares;
  const kinds = [["weak", "weak aggregate"], ["refined", "refined"], ["decision", "decisions"], ["gold", "gold"]];
  draw("shares", {
    type: "bar",
    data: {
      labels: s.labels,
      datasets: kinds.map(([k, name]) => {
        const total = s[k].reduce((a, b) => a + b, 0);
        return { label: `${name} (${total})`, kind: k, counts: s[k], backgroundColor: COLORS[k === "gold" ? "gold" : k],
                 data: s[k].map((n) => (total ? n / total : 0)) };
      }),
    },
    options: { scales: { y: { min: 0, max: 1, ticks: { callback: (v) => pct(v) } } },
               plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${pct(c.raw)} (${c.dataset.counts[c.dataIndex]})` } } } },
  });
}

function timeline(d) {
  const tl = d.timeline;
  draw("timeline", {
    type: "bar",
    data: {
      labels: tl.buckets.map((b) => new Date(b).toLocaleTimeString()),
      datasets: Object.entries(tl.series).map(([source, counts]) => ({ label: source, data: counts, backgroundColor: COLORS[source] || "#888" })),
    },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
}

function reliability(d) {
  const pik = d.report.strong_confidence, dec = d.report.decision_calibration;
  const points = (bins) => (bins || []).map((b) => ({ x: b.confidence, y: b.accuracy, n: b.count }));
  draw("reliability", {
    type: "scatter",
    data: {
      datasets: [
        { label: "perfect calibration", data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], showLine: true, pointRadius: 0, borderColor: "#c4c9d2", borderDash: [4, 4] },
        { label: "P(IK), active version", data: points(pik && pik.reliability), showLine: true, borderColor: COLORS.strong, backgroundColor: COLORS.strong },
        { label: "decision confidence", data: points(dec && dec.reliability), showLine: true, borderColor: COLORS.gold, backgroundColor: COLORS.gold },
      ],
    },
    options: { scales: { x: { min: 0, max: 1, title: { display: true, text: "confidence" } }, y: { min: 0, max: 1, title: { display: true, text: "accuracy" } } },
               plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: conf ${num(c.raw.x, 2)}, acc ${num(c.raw.y, 2)} (n=${c.raw.n})` } } } },
  });
  const parts = [];
  if (pik) parts.push(`P(IK) (${pik.source}): AUROC ${num(pik.auroc)}, ECE ${num(pik.ece)}, on ${pik.calibration_examples} gold; MSP AUROC ${num(pik.msp_auroc)}`);
  if (dec) parts.push(`decisions: accuracy ${pct(dec.accuracy)}, AUROC ${num(dec.auroc)}, ECE ${num(dec.ece)}, on ${dec.examples} gold`);
  document.getElementById("calibration").textContent = parts.join(" · ") || "No job has measured calibration on gold yet.";
}

function coverage(d) {
  const pik = d.report.strong_confidence, dec = d.report.decision_calibration, target = d.report.target_precision;
  const curve = (c) => (c || []).map((p) => ({ x: p.coverage, y: p.precision, t: p.threshold }));
  const datasets = [
    { label: "decisions by confidence", data: curve(dec && dec.precision_coverage), showLine: true, borderColor: COLORS.gold, backgroundColor: COLORS.gold },
    { label: "strong model by P(IK)", data: curve(pik && pik.precision_coverage), showLine: true, borderColor: COLORS.strong, backgroundColor: COLORS.strong },
  ];
  // The strong model's operating point: the share of gold whose P(IK) clears τ.
  if (pik && pik.precision_coverage && pik.precision_coverage.length) {
    const at = pik.precision_coverage.filter((p) => p.threshold >= d.report.tau).pop();
    if (at) datasets.push({ label: `τ = ${num(d.report.tau, 2)}`, data: [{ x: at.coverage, y: at.precision, t: at.threshold }], pointRadius: 7, backgroundColor: "#1d2433" });
  }
  // The fitted thresholds: a point each where reached on gold, and each in words, reached
  // or not (a point cannot show "not reached"). Decisions above the training point train
  // the next model.
  const thresholds = [
    ["target_precision", target, (t) => `target precision ${t.target}`, "triangle", COLORS.abstain],
    ["train_precision", d.report.train_precision, (t) => `trains the next model (train_precision ${t.target})`, "rectRot", COLORS.strong],
  ];
  const said = [];
  for (const [name, t, label, pointStyle, colour] of thresholds) {
    if (!t) continue;
    if (t.precision != null) datasets.push({ label: label(t), data: [{ x: t.coverage, y: t.precision, t: t.threshold }], pointRadius: 7, pointStyle, backgroundColor: colour });
    if (t.reason) said.push(`${name}: ${t.reason}`);
  }
  document.getElementById("thresholds").textContent = said.join(" · ");
  draw("coverage", {
    type: "scatter", data: { datasets },
    options: { scales: { x: { min: 0, max: 1, title: { display: true, text: "coverage" } }, y: { min: 0, max: 1, title: { display: true, text: "precision" } } },
               plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: coverage ${pct(c.raw.x)}, precision ${pct(c.raw.y)} at ≥ ${num(c.raw.t, 2)}` } } } },
  });
}

function versionsChart(d) {
  const vs = d.models.versions.slice().sort((a, b) => a.version - b.version);
  const metric = (v, k) => { const p = v.manifest.metrics && v.manifest.metrics.pik; return p ? p[k] : null; };
  draw("versions_chart", {
    type: "line",
    data: { labels: vs.map((v) => "v" + v.version),
            datasets: [{ label: "AUROC", data: vs.map((v) => metric(v, "auroc")), borderColor: COLORS.strong, backgroundColor: COLORS.strong },
                       { label: "ECE", data: vs.map((v) => metric(v, "ece")), borderColor: COLORS.abstain, backgroundColor: COLORS.abstain }] },
    options: { scales: { y: { min: 0, max: 1 } } },
  });
}

function lossChart(d) {
  const job = d.jobs.find((j) => j.progress && j.progress.loss_curve && j.progress.loss_curve.length);
  const curve = job ? job.progress.loss_curve : [];
  draw("loss", {
    type: "line",
    data: { labels: curve.map((p, i) => p.step ?? i),
            datasets: [{ label: "training loss", data: curve.map((p) => p.loss), borderColor: COLORS.strong, pointRadius: 0 },
                       { label: "validation loss", data: curve.map((p) => p.val_loss ?? null), borderColor: COLORS.gold, pointRadius: 0, spanGaps: true }] },
    options: { scales: { x: { title: { display: true, text: "step" } } } },
  });
  document.getElementById("loss_note").textContent = job ? `job #${job.id} (${job.mode}), ${curve.length} points` : "No training job has reported a loss yet.";
}

function tables(d) {
  const use = d.report.gold_use;
  document.getElementById("gold_use").textContent = use ? `Gold: ${use.reason}.` : "";
  document.querySelector("#stages tbody").innerHTML = d.report.stages.map((s) =>
    `<tr data-stage="${esc(s.stage)}"><td>${esc(s.stage)}</td><td>${s.on ? "on" : "off"}</td><td class="num">${s.gold}</td>
     <td class="num">${pct(s.input_accuracy)}</td><td class="num">${pct(s.output_accuracy)}</td><td class="num">${s.wins} / ${s.losses}</td><td>${esc(s.reason)}</td></tr>`).join("");
  document.querySelector("#sources tbody").innerHTML = d.sources.sources.map((s) =>
    `<tr data-source="${esc(s.source)}"><td>${esc(s.source)}</td><td class="num">${s.votes}</td><td class="num">${pct(s.coverage)}</td>
     <td class="num">${pct(s.overlaps)}</td><td class="num">${pct(s.conflicts)}</td><td class="num">${s.gold_votes}</td>
     <td class="num" data-field="empirical_accuracy">${pct(s.empirical_accuracy)}</td><td class="num">${pct(s.learned_accuracy)}</td>
     <td>${Object.entries(s.polarity).map(([l, n]) => `${esc(l)} ${n}`).join(", ")}</td></tr>`).join("")
    || `<tr><td colspan="9" class="muted">No weak labels yet.</td></tr>`;
  document.querySelector("#jobs tbody").innerHTML = d.jobs.map((j) => {
    const p = j.progress || {};
    const progress = j.state === "running" || j.state === "queued"
      ? [p.stage, p.epoch != null ? `epoch ${p.epoch}` : null, p.step != null ? `step ${p.step}${p.total_steps ? "/" + p.total_steps : ""}` : null,
         p.loss != null ? `loss ${num(p.loss)}` : null].filter(Boolean).join(" · ")
      : (j.error ? esc(j.error) : "");
    const active = j.state === "running" || j.state === "queued";
    const button = active ? `<button data-action="cancel" data-job="${j.id}">Cancel</button>`
      : (j.state === "failed" || j.state === "cancelled") ? `<button data-action="retry" data-job="${j.id}">Retry</button>` : "";
    return `<tr data-job="${j.id}"><td>${j.id}</td><td>${esc(j.mode)}</td><td>${esc(j.trigger)}</td><td><span class="state state-${esc(j.state)}">${esc(j.state)}</span></td>
            <td>${progress}</td><td>${j.model_version ? "v" + j.model_version : "–"}</td><td>${button}</td></tr>`;
  }).join("") || `<tr><td colspan="7" class="muted">No jobs yet.</td></tr>`;
  document.querySelector("#models tbody").innerHTML = d.models.versions.map((v) => {
    const p = (v.manifest.metrics && v.manifest.metrics.pik) || {};
    const button = v.active ? "<b>active</b>" : `<button data-action="activate" data-version="${v.version}">Activate</button>`;
    return `<tr data-version="${v.version}"><td>v${v.version}</td><td>${when(v.created_at)}</td><td class="num">${num(p.auroc)}</td>
            <td class="num">${num(p.ece)}</td><td class="num">${pct(p.accuracy)}</td><td>${button}</td></tr>`;
  }).join("") || `<tr><td colspan="6" class="muted">No model versions yet: a job trains the first.</td></tr>`;
}

async function refresh() {
  clearTimeout(timer);
  try {
    const d = await api("/dashboard");
    const json = JSON.stringify(d);
    if (json !== lastJson) {
      lastJson = json;
      window.dashboard = d;
      summary(d); shares(d); timeline(d); reliability(d); coverage(d); versionsChart(d); lossChart(d); tables(d);
      document.body.dataset.loaded = String(Date.now());
    }
    const busy = d.jobs.some((j) => j.state === "running" || j.state === "queued");
    timer = setTimeout(refresh, busy ? 2000 : 15000);
  } catch (e) {
    showError(e);
    timer = setTimeout(refresh, 15000);
  }
}

document.addEventListener("click", async (event) => {
  const b = event.target.closest("button[data-action]");
  if (!b) return;
  b.disabled = true;
  try {
    const a = b.dataset.action;
    if (a === "cancel") await api(`/jobs/${b.dataset.job}/cancel`, { method: "POST" });
    if (a === "retry") await api(`/jobs/${b.dataset.job}/retry`, { method: "POST" });
    if (a === "activate") await api(`/models/${b.dataset.version}/activate`, { method: "POST" });
    lastJson = "";
    await refresh();
  } catch (e) { showError(e); } finally { b.disabled = false; }
});

refresh();
