"""The live dashboard at `/`: one self-contained page (no CDN, no build step).

Data flow: the leaderboard loads from `/users/top` (ranked by rule score or model propensity,
optionally of one label), then follows `/events` (SSE): each update is applied at once, and a
debounced re-fetch of `/users/top` keeps ranks exactly Redis's. A chosen user's timeline
starts from `/users/{id}/history` (recent scores from the scores topic; x is event time) and
grows with the live updates. Below 940 px the panels stack. Every id and reason text goes in
through `textContent`, never `innerHTML`. Test hooks: rows
`#leaderboard tr[data-user][data-score][data-label]`, `#user-score[data-score]`,
`#updates[data-count]`, `#timeline[data-points]`, `#timeline text.tick`, `#board-by`,
`#board-label`, `#board-summary`, `#model-reasons li[data-feature]` (its `.pts` is `.up`, green,
when the contribution raises the probability, `.down`, red, when it lowers it).

The quality panel (issue 18) reads `/quality` every 10 s: the reliability curve of the
largest window, the ROC-AUC per day of event time, the windows' figures and the drift status
with the top features by PSI. Hooks: `#quality-status[data-status]`, `#reliability[data-bins]`,
`#auc-days[data-points]`, `#quality-windows tr[data-window]`,
`#drift-features li[data-feature]` (`.drifting` when over the threshold).

Model reasons read in words: the API's reasons carry their `text`; a live update carries only
feature and contribution, so the page holds the declared phrases (features/spec.py, through
`scoring.reason_words`), the same words without values, filled in when the page is built.
"""

from __future__ import annotations

import json

from features.spec import FEATURES
from scoring.reason_words import phrase

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>engage: live scores</title>
<style>
  :root { --fg:#1d2433; --muted:#6b7385; --line:#e3e6ee; --accent:#2f6fdf; --bg:#f6f7fb; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; color:var(--fg); background:var(--bg); }
  header { display:flex; flex-wrap:wrap; align-items:baseline; gap:.4rem 1.5rem;
           padding:.8rem 1.4rem; background:#fff; border-bottom:1px solid var(--line); }
  header h1 { font-size:1.15rem; margin:0; }
  .status { color:var(--muted); font-size:.85rem; }
  .dot { display:inline-block; width:.6rem; height:.6rem; border-radius:50%;
         background:#c33; margin-right:.3rem; vertical-align:middle; }
  .dot.live { background:#2a2; }
  main { display:grid; grid-template-columns: minmax(420px, 1fr) minmax(420px, 1.2fr);
         gap:1.2rem; padding:1.2rem 1.4rem; }
  section { min-width:0; background:#fff; border:1px solid var(--line); border-radius:8px;
            padding:1rem; }
  h2 { font-size:1rem; margin:0 0 .6rem; }
  table { width:100%; border-collapse:collapse; }
  th, td { text-align:left; padding:.28rem .45rem; border-bottom:1px solid var(--line); }
  th { color:var(--muted); font-weight:600; font-size:.8rem; }
  td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
  tbody tr { cursor:pointer; }
  #quality tbody tr { cursor:default; }
  tbody tr:hover { background:#eef3fd; }
  tbody tr.selected { background:#dde8fc; }
  td.user { max-width:16rem; overflow:hidden; text-overflow:ellipsis; white-space:nowrap;
            font-family:ui-monospace, monospace; font-size:.85rem; }
  .flash { animation:flash 1s ease-out; }
  @keyframes flash { from { background:#fff1a8; } to { background:transparent; } }
  .label { padding:.05rem .4rem; border-radius:4px; font-size:.78rem; }
  .label.high { background:#d7f5dd; } .label.medium { background:#fdf0cc; }
  .label.low { background:#eceef3; }
  form { display:flex; gap:.5rem; margin-bottom:.8rem; }
  .controls { display:flex; flex-wrap:wrap; gap:.4rem 1rem; margin-bottom:.5rem;
              color:var(--muted); font-size:.85rem; }
  select { padding:.15rem .3rem; border:1px solid var(--line); border-radius:5px; }
  #board-summary { margin:.2rem 0 .5rem; font-size:.85rem; }
  input { flex:1; min-width:0; padding:.35rem .5rem; border:1px solid var(--line);
          border-radius:5px; }
  button { padding:.35rem .8rem; border:0; border-radius:5px; background:var(--accent);
           color:#fff; cursor:pointer; }
  .big { font-size:2rem; font-weight:650; font-variant-numeric:tabular-nums; }
  .facts { display:flex; gap:1.6rem; align-items:baseline; flex-wrap:wrap; }
  .facts div span { display:block; color:var(--muted); font-size:.78rem; }
  #user-id { font-family:ui-monospace, monospace; word-break:break-all; }
  #timeline { width:100%; height:190px; display:block; margin:.6rem 0; }
  #timeline text { font-size:10px; fill:#889; }
  /* Narrow screens (a phone, a split window): the panels stack and the table tightens so
     every column stays visible. */
  @media (max-width: 940px) {
    main { grid-template-columns:minmax(0, 1fr); padding:.8rem .5rem; gap:.8rem; }
    header { padding:.6rem .8rem; }
    section { padding:.7rem .6rem; }
    th, td { padding:.25rem .3rem; }
    td.user { max-width:7.5rem; }
  }
  #quality { grid-column:1 / -1; }
  .qgrid { display:grid; grid-template-columns:repeat(3, minmax(0, 1fr)); gap:1rem; }
  .qgrid svg { width:100%; height:200px; display:block; }
  .qgrid svg text { font-size:10px; fill:#889; }
  .qgrid h3 { font-size:.85rem; margin:0 0 .3rem; color:var(--muted); font-weight:600; }
  .badge { padding:.05rem .45rem; border-radius:4px; font-size:.8rem; background:#eceef3; }
  .badge.ok { background:#d7f5dd; } .badge.drifting { background:#fbd5d5; color:#8a1c1c; }
  #drift-features li.drifting .pts { color:#c62828; font-weight:650; }
  @media (max-width: 940px) { .qgrid { grid-template-columns:minmax(0, 1fr); } }
  ul { margin:.2rem 0 .6rem; padding-left:1.1rem; }
  li .pts { font-variant-numeric:tabular-nums; color:var(--accent); margin-right:.4rem; }
  li .pts.up { color:#1a7f37; } li .pts.down { color:#c62828; }
  .muted { color:var(--muted); }
  .error { color:#b22; }
</style>
</head>
<body>
<header>
  <h1>engage: live engagement scores</h1>
  <span class="status"><span id="conn-dot" class="dot"></span><span id="conn">connecting</span>
  </span>
  <span class="status">updates <span id="updates" data-count="0">0</span></span>
  <span class="status">last update <span id="last-update">-</span></span>
</header>
<main>
  <section>
    <h2 id="board-title">Leaderboard: top 20 by rule score</h2>
    <div class="controls">
      <label>rank by <select id="board-by"><option value="rule">rule score</option>
        <option value="model">model propensity</option></select></label>
      <label>label <select id="board-label"><option value="">all</option>
        <option value="high">high</option><option value="medium">medium</option>
        <option value="low">low</option></select></label>
    </div>
    <div id="board-summary" class="muted"></div>
    <table>
      <thead><tr><th class="num">#</th><th>user</th><th class="num">rule score</th>
        <th>label</th><th class="num">model p</th></tr></thead>
      <tbody id="leaderboard"></tbody>
    </table>
    <p id="board-empty" class="muted">no scored users yet (is the consumer running?)</p>
  </section>
  <section>
    <h2>User</h2>
    <form id="user-form"><input id="user-input" placeholder="user id (or click a row)"
      autocomplete="off"><button type="submit">show</button></form>
    <div id="user-panel" hidden>
      <div class="facts">
        <div><span>user</span><b id="user-id"></b></div>
        <div><span>rule score</span><b id="user-score" class="big" data-score=""></b></div>
        <div><span>label</span><b id="user-label"></b></div>
        <div><span>model propensity</span><b id="user-propensity"></b></div>
      </div>
      <svg id="timeline" data-points="0" role="img" aria-label="rule score over event time">
      </svg>
      <div class="muted" id="timeline-note"></div>
      <h2>Why this score</h2>
      <ul id="reasons"></ul>
      <h2>Model reasons</h2>
      <ul id="model-reasons"></ul>
    </div>
    <p id="user-error" class="error"></p>
  </section>
  <section id="quality">
    <h2>Model quality, live <span id="quality-status" class="badge" data-status="">-</span>
      <span class="muted" id="quality-model"></span></h2>
    <div class="controls"><label>domain <select id="quality-domain"></select></label>
      <span id="quality-note"></span></div>
    <div class="qgrid">
      <div><h3 id="reliability-title">Reliability</h3>
        <svg id="reliability" data-bins="0" role="img"
          aria-label="observed rate against mean served probability"></svg></div>
      <div><h3>ROC-AUC per day of event time</h3>
        <svg id="auc-days" data-points="0" role="img" aria-label="ROC-AUC per day"></svg>
        <table><tbody class="head"><tr><th>window</th><th class="num">n</th>
          <th class="num">AUC</th><th class="num">ECE</th><th class="num">rate</th>
          <th class="num">mean p</th></tr></tbody>
          <tbody id="quality-windows"></tbody></table></div>
      <div><h3>Drift: PSI against the training data</h3>
        <div id="drift-summary" class="muted"></div>
        <ul id="drift-features"></ul></div>
    </div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const TOP_N = 20;
let board = [];            // [{user_id, score, rule_score, label, propensity}], Redis order
let boardBy = "rule";      // rank by "rule" score or "model" propensity
let boardLabel = "";       // only this label ("" = all)
let selected = null;       // the chosen user id
let timeline = new Map();  // event_id -> {ts, score} of the chosen user
const TIMELINE_MAX = 500;
let updates = 0;
let resyncTimer = null, resyncDeadline = 0;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
const fmt = (x, d) => (x === null || x === undefined) ? "-" : Number(x).toFixed(d);
// Each feature's words without a value (features/spec.py): a live update's model reasons carry
// only feature and contribution; the API's carry their own text.
const MODEL_PHRASES = __MODEL_PHRASES__;
const modelText = (r) => r.text || MODEL_PHRASES[r.feature] || r.feature;

function renderBoard(changed) {
  const body = $("leaderboard");
  const rows = board.map((u, i) => {
    const tr = el("tr");
    tr.dataset.user = u.user_id;
    tr.dataset.score = String(u.rule_score);
    tr.dataset.rank = String(i + 1);
    tr.dataset.label = u.label;
    if (u.user_id === selected) tr.classList.add("selected");
    if (changed && changed.has(u.user_id)) tr.classList.add("flash");
    tr.append(el("td", i + 1, "num rank"), el("td", u.user_id, "user"),
              el("td", fmt(u.rule_score, 1), "num score"));
    const lab = el("td"); lab.append(el("span", u.label, "label " + u.label)); tr.append(lab);
    tr.append(el("td", fmt(u.propensity, 3), "num propensity"));
    tr.title = u.user_id;
    tr.addEventListener("click", () => select(u.user_id));
    return tr;
  });
  body.replaceChildren(...rows);
  $("board-empty").hidden = board.length > 0;
  $("board-summary").textContent = boardSummary();
}

function boardSummary() {
  // Says what the label column alone cannot: how the shown users split, and what to do
  // when they all share one label.
  if (!board.length) return "";
  const counts = {};
  for (const u of board) counts[u.label] = (counts[u.label] || 0) + 1;
  const parts = ["high", "medium", "low"].filter((l) => counts[l])
    .map((l) => counts[l] + " " + l);
  const only = Object.keys(counts);
  if (only.length === 1 && !boardLabel)
    return "all " + board.length + " shown are " + only[0] + (boardBy === "rule" ?
      ": rank by model propensity to tell them apart, or pick a label" :
      ": pick a label to see the others");
  return "labels shown: " + parts.join(", ");
}

function rankValue(row) {
  return boardBy === "model" ? row.propensity : row.rule_score;
}

function boardQuery() {
  return "/users/top?n=" + TOP_N + "&by=" + boardBy + (boardLabel ? "&label=" + boardLabel : "");
}

function boardChanged() {
  boardBy = $("board-by").value;
  boardLabel = $("board-label").value;
  $("board-title").textContent = "Leaderboard: top " + TOP_N + " by " +
    (boardBy === "model" ? "model propensity" : "rule score") +
    (boardLabel ? ", label " + boardLabel : "");
  board = [];
  renderBoard(null);
  resync();
}

async function resync() {
  resyncTimer = null; resyncDeadline = 0;
  try {
    const query = boardQuery();
    const r = await fetch(query);
    if (!r.ok || query !== boardQuery()) return;  // the controls changed meanwhile
    const rows = await r.json();
    const before = new Map(board.map((u) => [u.user_id, u.rule_score]));
    board = rows.map((u) => ({user_id: u.user_id, score: u.score, rule_score: u.rule_score,
                              label: u.label, propensity: u.propensity}));
    const changed = new Set(board.filter((u) => before.get(u.user_id) !== u.rule_score)
                                 .map((u) => u.user_id));
    renderBoard(changed);
  } catch (e) { /* the next update or reconnect retries */ }
}

function scheduleResync() {
  // Debounced (0.5 s after the last update) but at most 2 s late while updates keep coming.
  const now = Date.now();
  if (!resyncDeadline) resyncDeadline = now + 2000;
  clearTimeout(resyncTimer);
  resyncTimer = setTimeout(resync, Math.max(0, Math.min(500, resyncDeadline - now)));
}

function applyUpdates(list) {
  const changed = new Set();
  for (const u of list) {
    const row = {user_id: u.user_id, rule_score: u.rule.score, label: u.rule.label,
                 propensity: modelPropensity(u.model)};
    row.score = rankValue(row);
    const i = board.findIndex((b) => b.user_id === u.user_id);
    const last = board[board.length - 1];
    if ((boardLabel && row.label !== boardLabel) || row.score === null) {
      if (i >= 0) { board.splice(i, 1); changed.add(u.user_id); }  // the resync refills
      continue;
    }
    if (i >= 0) board[i] = row;
    else if (board.length < TOP_N || row.score > last.score) board.push(row);
    else continue;
    changed.add(u.user_id);
  }
  board.sort((a, b) => b.score - a.score);
  board = board.slice(0, TOP_N);
  if (changed.size) renderBoard(changed);
  for (const u of list) if (u.user_id === selected) showUpdate(u);
}

function showScore(s) {
  // s: {user_id, rule_score, label, reasons, propensity, model_reasons, model_version,
  //     model_status}: model_status says why there is no propensity ("no model for this
  //     domain": the model was trained on the other domain's events)
  $("user-panel").hidden = false;
  $("user-error").textContent = "";
  $("user-id").textContent = s.user_id;
  $("user-score").textContent = fmt(s.rule_score, 1);
  $("user-score").dataset.score = String(s.rule_score);
  $("user-label").textContent = s.label;
  $("user-propensity").textContent = s.propensity === null ? (s.model_status || "no model") :
    fmt(s.propensity, 3) + " (" + s.model_version + ")";
  $("reasons").replaceChildren(...s.reasons.map((r) => {
    const li = el("li"); li.dataset.signal = r.signal;
    li.append(el("span", "+" + fmt(r.points, 1), "pts"), el("span", r.text, "text"));
    return li;
  }));
  if (!s.reasons.length) $("reasons").replaceChildren(el("li", "no signals yet", "muted"));
  $("model-reasons").replaceChildren(...(s.model_reasons || []).map((r) => {
    const li = el("li"); li.dataset.feature = r.feature; li.title = r.feature;
    const way = r.contribution > 0 ? " up" : r.contribution < 0 ? " down" : "";
    li.append(el("span", (r.contribution >= 0 ? "+" : "") + fmt(r.contribution, 3), "pts" + way),
              el("span", modelText(r), "text"));
    return li;
  }));
  if (!(s.model_reasons || []).length)
    $("model-reasons").replaceChildren(
      el("li", s.model_status || (s.propensity === null ? "no model registered" : "none"),
         "muted"));
}

function modelPropensity(model) {
  // A score message's model part: null without a model, or {skipped: "no model for this
  // domain", domain} for an event of a domain the model was not trained on.
  return model && typeof model.propensity === "number" ? model.propensity : null;
}

function showUpdate(u) {
  showScore({user_id: u.user_id, rule_score: u.rule.score, label: u.rule.label,
             reasons: u.rule.reasons, propensity: modelPropensity(u.model),
             model_version: u.model ? (u.model.version || null) : null,
             model_status: u.model ? (u.model.skipped || null) : null,
             model_reasons: u.model ? (u.model.propensity_reasons || []) : []});
  addPoint(u.event_id, u.event_ts, u.rule.score);
}

function addPoint(eventId, ts, score, redraw) {
  // Keyed by event id: the history, the current score and live updates overlap.
  timeline.set(eventId, {ts: ts, score: score});
  if (timeline.size > TIMELINE_MAX) {
    const oldest = [...timeline.entries()].sort((a, b) => a[1].ts - b[1].ts)[0][0];
    timeline.delete(oldest);
  }
  if (redraw !== false) drawTimeline();
}

function timeLabel(t, span) {
  // Event time, UTC: the date when the points span days, else the time of day.
  const iso = new Date(t).toISOString();
  return span >= 2 * 86400000 ? iso.slice(0, 10) :
    span >= 86400000 ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 16);
}

function drawTimeline() {
  const svg = $("timeline"), NS = "http://www.w3.org/2000/svg", H = 190, P = 22;
  const W = Math.max(200, Math.round(svg.clientWidth || 600));  // drawn at its real width
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.replaceChildren();
  svg.dataset.points = String(timeline.size);
  const pts = [...timeline.values()].sort((a, b) => a.ts - b.ts);
  const mk = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  mk("line", {x1: P, y1: H - P, x2: W - 4, y2: H - P, stroke: "#ccd"});
  if (!pts.length) { $("timeline-note").textContent = ""; return; }
  const t0 = pts[0].ts, t1 = pts[pts.length - 1].ts;
  const ys = pts.map((p) => p.score);
  const lo = Math.min(0, ...ys), hi = Math.max(...ys, lo + 1);
  const x = (t) => P + (t1 === t0 ? (W - P - 8) / 2 : (t - t0) / (t1 - t0) * (W - P - 8));
  const y = (s) => H - P - (s - lo) / (hi - lo) * (H - 2 * P);
  mk("text", {x: 2, y: y(hi) + 4}, hi.toFixed(0));
  mk("text", {x: 2, y: y(lo) + 4}, lo.toFixed(0));
  const ticks = t1 === t0 ? [t0] : [t0, t0 + (t1 - t0) / 2, t1];
  ticks.forEach((t, i) => {
    const anchor = ticks.length === 1 ? "middle" : ["start", "middle", "end"][i];
    mk("line", {x1: x(t), y1: H - P, x2: x(t), y2: H - P + 4, stroke: "#ccd"});
    mk("text", {x: x(t), y: H - 6, "text-anchor": anchor, class: "tick"},
       timeLabel(t, t1 - t0));
  });
  mk("polyline", {points: pts.map((p) => x(p.ts) + "," + y(p.score)).join(" "),
                  fill: "none", stroke: "#2f6fdf", "stroke-width": 2});
  for (const p of pts) mk("circle", {cx: x(p.ts), cy: y(p.score), r: 2.5, fill: "#2f6fdf"});
  const day = (t) => new Date(t).toISOString().replace("T", " ").slice(0, 16);
  $("timeline-note").textContent = pts.length + " score(s) by event time, " + day(t0) +
    (t1 !== t0 ? " to " + day(t1) : "") + " UTC" + historyNote;
}

let historyNote = "";

async function loadHistory(userId) {
  // The user's recent scores (GET /users/{id}/history, read from the scores topic), so the
  // timeline starts with the past instead of empty; live updates then extend it.
  try {
    const r = await fetch("/users/" + encodeURIComponent(userId) + "/history");
    if (selected !== userId) return;
    if (!r.ok) {
      historyNote = r.status === 404 ? "" : "; past scores unavailable now (" + r.status + ")";
      drawTimeline();
      return;
    }
    const points = await r.json();
    if (selected !== userId) return;
    for (const p of points) addPoint(p.event_id, p.event_ts, p.rule_score, false);
    historyNote = points.length ? "; past scores from the scores topic, then live" : "";
    drawTimeline();
  } catch (e) { /* the live updates still draw the timeline */ }
}

async function select(userId) {
  selected = userId; timeline = new Map(); historyNote = "";
  $("user-input").value = userId;
  renderBoard(null);
  drawTimeline();
  const r = await fetch("/users/" + encodeURIComponent(userId) + "/score");
  if (selected !== userId) return;
  if (r.ok) {
    const s = await r.json();
    showScore(s);
    addPoint(s.event_id, s.event_ts, s.rule_score);
    loadHistory(userId);
  } else {
    $("user-panel").hidden = true;
    const detail = (await r.json().catch(() => ({}))).detail;
    $("user-error").textContent = r.status === 404 ?
      "not scored yet; waiting for updates of this user" : String(detail || r.status);
  }
}

$("user-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("user-input").value;
  if (id) select(id);
});

function connect() {
  const es = new EventSource("/events");
  es.onopen = () => {
    $("conn").textContent = "live"; $("conn-dot").classList.add("live");
    resync();
  };
  es.onerror = () => {
    $("conn").textContent = "reconnecting"; $("conn-dot").classList.remove("live");
  };
  es.addEventListener("scores", (e) => {
    const list = JSON.parse(e.data);
    updates += list.length;
    $("updates").textContent = updates.toLocaleString();
    $("updates").dataset.count = String(updates);
    $("last-update").textContent = new Date().toLocaleTimeString();
    applyUpdates(list);
    scheduleResync();
  });
}

// The quality panel (GET /quality: what `engage quality --json` reports), every 10 s.
let quality = null;
function svgIn(svg, W, H) {
  const NS = "http://www.w3.org/2000/svg";
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.replaceChildren();
  return (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
}

function drawReliability(win) {
  const svg = $("reliability"), H = 200, P = 24;
  const W = Math.max(200, Math.round(svg.clientWidth || 300));
  const mk = svgIn(svg, W, H);
  const bins = (win && win.reliability) || [];
  svg.dataset.bins = String(bins.length);
  const x = (v) => P + v * (W - P - 8), y = (v) => H - P - v * (H - P - 8);
  mk("line", {x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#ccd", "stroke-dasharray": "4"});
  mk("line", {x1: P, y1: H - P, x2: W - 4, y2: H - P, stroke: "#ccd"});
  mk("line", {x1: P, y1: 4, x2: P, y2: H - P, stroke: "#ccd"});
  mk("text", {x: x(0), y: H - 8}, "0"); mk("text", {x: x(1), y: H - 8, "text-anchor": "end"}, "1");
  mk("text", {x: x(0.5), y: H - 8, "text-anchor": "middle"}, "mean served p");
  mk("text", {x: 2, y: y(1) + 4}, "1"); mk("text", {x: 2, y: y(0.5)}, "rate");
  if (!bins.length) return;
  mk("polyline", {points: bins.map((b) => x(b.mean_p) + "," + y(b.rate)).join(" "),
                  fill: "none", stroke: "#2f6fdf", "stroke-width": 2});
  const most = Math.max(...bins.map((b) => b.n));
  for (const b of bins)
    mk("circle", {cx: x(b.mean_p), cy: y(b.rate), r: 2 + 3 * Math.sqrt(b.n / most),
                  fill: "#2f6fdf", class: "bin"});
}

function drawAucDays(days) {
  const svg = $("auc-days"), H = 200, P = 24;
  const W = Math.max(200, Math.round(svg.clientWidth || 300));
  const mk = svgIn(svg, W, H);
  const pts = days.filter((d) => d.roc_auc !== null && d.roc_auc !== undefined);
  svg.dataset.points = String(pts.length);
  const lo = Math.min(0.5, ...pts.map((d) => d.roc_auc)), hi = 1;
  const x = (i) => P + (pts.length < 2 ? (W - P - 8) / 2 : i / (pts.length - 1) * (W - P - 8));
  const y = (v) => H - P - (v - lo) / (hi - lo) * (H - P - 8);
  mk("line", {x1: P, y1: H - P, x2: W - 4, y2: H - P, stroke: "#ccd"});
  mk("text", {x: 2, y: y(hi) + 4}, hi.toFixed(1)); mk("text", {x: 2, y: y(lo)}, lo.toFixed(2));
  if (!pts.length) return;
  mk("polyline", {points: pts.map((d, i) => x(i) + "," + y(d.roc_auc)).join(" "),
                  fill: "none", stroke: "#2f6fdf", "stroke-width": 2});
  pts.forEach((d, i) => {
    mk("circle", {cx: x(i), cy: y(d.roc_auc), r: 3, fill: "#2f6fdf"});
    if (i === 0 || i === pts.length - 1)
      mk("text", {x: x(i), y: H - 8, "text-anchor": i ? "end" : "start", class: "tick"},
         d.day.slice(5));
  });
}

function renderQuality() {
  const report = quality;
  if (!report) return;
  const status = report.status || "no drift data";
  const badge = $("quality-status");
  badge.textContent = status; badge.dataset.status = status;
  badge.className = "badge " + status.replace(/ /g, "-");
  const domains = Object.keys(report.quality || {});
  const pick = $("quality-domain");
  if ([...pick.options].map((o) => o.value).join() !== domains.join())
    pick.replaceChildren(...domains.map((d) => {
      const o = el("option", d); o.value = d; return o;
    }));
  const picked = pick.value || domains[0];
  const q = (report.quality || {})[picked];
  $("quality-model").textContent = q ? "model " + q.model_versions.join(", ") : "";
  let note = q ? q.labelled.toLocaleString() + " labelled events judged"
    : "no live quality yet (the consumer keeps it once it scores labelled events with a model)";
  const joined = report.funnel;  // the funnel propensity's delayed labels (docs/quality.md)
  if (q && picked === "funnel/propensity" && joined)
    note += "; " + joined.waiting.toLocaleString() + " waiting for a conversion";
  $("quality-note").textContent = note;
  const windows = q ? Object.entries(q.windows) : [];
  const shown = windows.filter(([, f]) => f.n);
  const largest = shown.length ? shown[shown.length - 1] : null;
  $("reliability-title").textContent = "Reliability" +
    (largest ? ", last " + largest[1].n.toLocaleString() + " labelled" : "");
  drawReliability(largest ? largest[1] : null);
  drawAucDays(q ? q.days : []);
  $("quality-windows").replaceChildren(...shown.map(([w, f]) => {
    const tr = el("tr"); tr.dataset.window = w;
    tr.append(el("td", "last " + Number(w).toLocaleString()),
              el("td", f.n.toLocaleString(), "num"),
              el("td", fmt(f.roc_auc, 3), "num auc"), el("td", fmt(f.ece, 3), "num ece"),
              el("td", fmt(f.positive_rate, 3), "num"), el("td", fmt(f.mean_p, 3), "num"));
    return tr;
  }));
  const drift = (report.drift || [])[0];
  $("drift-summary").textContent = drift ? drift.status + " (PSI > " + drift.threshold +
    " over " + drift.vectors.toLocaleString() + " served vectors" +
    (drift.label && drift.label.psi !== undefined ? "; label PSI " + fmt(drift.label.psi, 3)
     : "") + ")" : "no drift data (a model trained with its reference is needed)";
  $("drift-features").replaceChildren(...(drift ? drift.top : []).map((row) => {
    const li = el("li"); li.dataset.feature = row.feature;
    if (drift.drifting.includes(row.feature)) li.classList.add("drifting");
    li.append(el("span", fmt(row.psi, 3), "pts"), el("span", row.feature, "text"));
    return li;
  }));
}

async function loadQuality() {
  try {
    const r = await fetch("/quality");
    if (r.ok) { quality = await r.json(); renderQuality(); }
  } catch (e) { /* the next round retries */ }
}

$("quality-domain").addEventListener("change", renderQuality);
loadQuality();
setInterval(loadQuality, 10000);
$("board-by").addEventListener("change", boardChanged);
$("board-label").addEventListener("change", boardChanged);
window.addEventListener("resize", () => {
  if (timeline.size) drawTimeline();
  renderQuality();
});
resync();
connect();
const initial = new URLSearchParams(location.search).get("user");
if (initial) select(initial);
</script>
</body>
</html>
"""


def _model_phrases() -> str:
    """The phrases as a JSON object for the page's script (`<` escaped: it cannot end it)."""
    words = {f.name: phrase(f.name) for f in FEATURES}
    return json.dumps(words, ensure_ascii=False).replace("<", "\\u003c")


DASHBOARD_HTML = _PAGE.replace("__MODEL_PHRASES__", _model_phrases(), 1)
