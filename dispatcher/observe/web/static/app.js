// gpufleet web: each page fetches its /api/ JSON, renders it, and fetches again every refresh.
// No framework and no build step: DOM nodes are made with el(), text always through textContent.
"use strict";

const body = document.body;
const page = body.dataset.page;
const refreshMs = Number(body.dataset.refresh) || 2000;
const csrf = document.querySelector('meta[name="csrf"]').content;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "width") node.style.width = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function bar(ratio, label) {
  const pct = Math.max(0, Math.min(1, ratio || 0)) * 100;
  return el("span", {class: "bar", title: label || `${pct.toFixed(0)}%`},
    el("span", {class: "fill" + (pct > 90 ? " hot" : ""), width: `${pct.toFixed(1)}%`}),
    el("span", {class: "barlabel"}, label || `${pct.toFixed(0)}%`));
}

function seconds(s) {
  if (s == null) return "-";
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function message(text, isError) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.className = "message" + (isError ? " error" : "");
  m.hidden = !text;
}

async function act(url) {
  const reply = await fetch(url, {method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": csrf}});
  const data = await reply.json().catch(() => ({}));
  message(reply.ok ? `done: ${JSON.stringify(data)}` : `refused: ${data.error || reply.status}`, !reply.ok);
  tick();
}

document.addEventListener("click", (e) => {
  const button = e.target.closest("[data-action]");
  if (button) { e.preventDefault(); act(button.dataset.action); }
});

const previous = {};  // node -> [completed + failed, time]: jobs/s between two refreshes

function renderFleet(d) {
  const c = d.counts;
  document.getElementById("summary").replaceChildren(
    el("span", {class: "stat"}, "live ", el("b", {}, c.live), " / desired ", el("b", {}, d.desired_nodes ?? "-")),
    ...["alive", "draining", "ejected", "unhealthy", "dead"].map((s) => el("span", {class: `stat ${s}`}, `${s} ${c[s]}`)),
    el("span", {class: "stat"}, "waiting: " + Object.entries(d.ingress).map(([p, n]) => `${p} ${n}`).join(" · ")));
  const now = Date.now() / 1000;
  const canAct = !!document.querySelector("#nodes thead th:last-child:empty");
  fill(document.querySelector("#nodes tbody"), d.nodes.map((n) => {
    const done = n.completed + n.failed, before = previous[n.node];
    const rate = before && now > before[1] ? Math.max(0, (done - before[0]) / (now - before[1])) : null;
    previous[n.node] = [done, now];
    const gpus = (n.gpus && n.gpus.length ? n.gpus : [{gpu: "all", util: n.gpu_util, mem_used_gib: null}]).map((g) =>
      el("div", {class: "gpu"}, el("span", {class: "gpuname"}, `GPU ${g.gpu}`), bar(g.util, `util ${((g.util || 0) * 100).toFixed(0)}%`),
         bar(g.mem_total_gib ? g.mem_used_gib / g.mem_total_gib : n.mem_util,
             g.mem_total_gib ? `mem ${g.mem_used_gib.toFixed(1)}/${g.mem_total_gib.toFixed(0)} GiB` : `mem ${((n.mem_util || 0) * 100).toFixed(0)}%`),
         el("span", {class: "dim"}, [g.temperature_c != null ? `${g.temperature_c.toFixed(0)}°C` : "", g.power_w != null ? `${g.power_w.toFixed(0)} W` : ""].filter(Boolean).join(" · "))));
    const cells = [el("td", {class: "mono"}, n.node), el("td", {class: `state ${n.state}`}, n.state), el("td", {}, ...gpus),
      el("td", {}, n.queued), el("td", {}, n.running), el("td", {}, rate == null ? "-" : rate.toFixed(1)),
      el("td", {}, seconds(n.service_time_s)), el("td", {}, (n.models || []).join(", ") || "-"), el("td", {}, n.health_reason || "-")];
    if (canAct) {
      const verb = n.state === "draining" ? "undrain" : "drain";
      cells.push(el("td", {}, el("button", {"data-action": `/api/nodes/${encodeURIComponent(n.node)}/${verb}`}, verb)));
    }
    return el("tr", {class: "node", "data-node": n.node}, ...cells);
  }));
  fill(document.querySelector("#tenants tbody"), (d.tenants || []).map((t) => el("tr", {},
    el("td", {class: "mono"}, t.tenant), el("td", {}, t.weight), el("td", {}, t.waiting), el("td", {}, t.in_flight),
    el("td", {}, t.max_running ?? "-"), el("td", {}, t.max_queued ?? "-"))));
}

const SVG = "http://www.w3.org/2000/svg";

function chart(id, points, format) {
  // one line over the buckets: x by time, y from 0 to the largest value
  const svg = document.getElementById(id);
  if (!svg) return;
  const top = Math.max(...points.map((p) => p[1]), 1e-9);
  const t0 = points.length ? points[0][0] : 0, t1 = points.length ? points[points.length - 1][0] : 1;
  const xy = points.map(([t, v]) => `${(300 * (t - t0)) / Math.max(t1 - t0, 1)},${78 - (76 * v) / top}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", xy.join(" "));
  line.setAttribute("class", "line");
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "10");
  label.setAttribute("class", "axis");
  label.textContent = `max ${format(top)}`;
  svg.replaceChildren(line, label);
}

async function renderHistory() {
  const section = document.getElementById("history");
  if (!section) return;
  const reply = await fetch(section.dataset.api, {credentials: "same-origin"});
  if (!reply.ok) return;
  const buckets = (await reply.json()).buckets;
  chart("chart-rate", buckets.map((b) => [b.t, b.jobs_per_s]), (v) => v.toFixed(1));
  chart("chart-waiting", buckets.map((b) => [b.t, b.waiting]), (v) => v.toFixed(0));
  chart("chart-failed", buckets.map((b) => [b.t, b.failed_share]), (v) => `${(100 * v).toFixed(1)}%`);
  const span = buckets.length ? `${new Date(buckets[0].t * 1000).toLocaleTimeString()} to ${new Date(buckets[buckets.length - 1].t * 1000).toLocaleTimeString()}` : "no history yet";
  document.getElementById("history-span").textContent = `${buckets.length} buckets, ${span}`;
}

function progress(b) {
  return bar(b.size ? b.ended / b.size : 1, `${b.size ? ((100 * b.ended) / b.size).toFixed(0) : 100}%`);
}

function pager(d, total, perPage) {
  const params = new URLSearchParams(location.search);
  const page = Number(params.get("page") || 0);
  document.getElementById("pageinfo").textContent = `page ${page + 1}` + (total != null ? ` of ${Math.max(1, Math.ceil(total / perPage))}` : "");
  const link = (id, to, shown) => {
    const a = document.getElementById(id);
    a.hidden = !shown;
    const p = new URLSearchParams(params);
    p.set("page", String(to));
    a.href = `?${p}`;
  };
  return {page, link};
}

function renderBatches(d) {
  fill(document.querySelector("#batches tbody"), d.batches.map((b) => el("tr", {class: "batch"},
    el("td", {class: "mono"}, el("a", {href: `/batches/${encodeURIComponent(b.batch)}`}, b.batch)), el("td", {}, b.tenant),
    el("td", {}, progress(b)), el("td", {}, `${b.ended} / ${b.size}`), el("td", {}, b.finished), el("td", {}, b.failed),
    el("td", {}, b.canceled), el("td", {}, b.jobs_per_s), el("td", {}, b.done ? "done" : seconds(b.eta_s)))));
  const {page, link} = pager(d, d.total, d.per_page);
  link("prev", page - 1, page > 0);
  link("next", page + 1, (page + 1) * d.per_page < d.total);
}

function outcome(j) {
  if (j.error) return el("span", {class: "error"}, j.error);
  return el("span", {class: "mono"}, j.result === undefined ? "-" : JSON.stringify(j.result).slice(0, 120));
}

function renderBatch(d) {
  const b = d.batch;
  document.getElementById("progress").replaceChildren(progress(b),
    el("span", {class: "stat"}, `${b.ended} of ${b.size} ended`), el("span", {class: "stat"}, `finished ${b.finished}`),
    el("span", {class: "stat failed"}, `failed ${b.failed}`), el("span", {class: "stat"}, `canceled ${b.canceled}`),
    el("span", {class: "stat"}, `${b.jobs_per_s} jobs/s`), el("span", {class: "stat"}, b.done ? "done" : `ETA ${seconds(b.eta_s)}`));
  fill(document.querySelector("#jobs tbody"), d.jobs.map((j) => el("tr", {class: "job"},
    el("td", {class: "mono"}, el("a", {href: `/jobs/${encodeURIComponent(j.job_id || j.id)}`}, j.id)),
    el("td", {class: `status ${j.status}`}, j.status), el("td", {}, j.node || "-"), el("td", {}, j.attempts),
    el("td", {}, outcome(j)), el("td", {}, j.ended_at || "-"))));
  const {page, link} = pager(d, d.filtered ? null : b.size, d.query.per_page);
  if (d.filtered) {
    link("prev", 0, page > 0);
    const next = document.getElementById("next");
    const p = new URLSearchParams(location.search);
    p.set("page", String(d.scanned_to));
    next.href = `?${p}`;
    next.hidden = d.done_scanning;
    document.getElementById("pageinfo").textContent = d.done_scanning ? "to the end of the batch" : `looked up to job ${d.scanned_to}`;
  } else {
    link("prev", page - 1, page > 0);
    link("next", page + 1, (page + 1) * d.query.per_page < b.size);
  }
}

function renderJob(d) {
  const fields = [["id", d.id], ["job id", d.job_id], ["status", d.status], ["batch", d.batch], ["tenant", d.tenant],
    ["priority", d.priority], ["function", d.func], ["node", d.node || "-"], ["attempts", d.attempts],
    ["enqueued", d.enqueued_at || "-"], ["started", d.started_at || "-"], ["ended", d.ended_at || "-"]];
  document.getElementById("job").replaceChildren(...fields.flatMap(([k, v]) => {
    const value = k === "batch" && v ? el("a", {href: `/batches/${encodeURIComponent(v)}`}, v) : (v ?? "-");
    return [el("dt", {}, k), el("dd", {class: k === "status" ? `status ${v}` : ""}, value)];
  }));
  fill(document.querySelector("#events tbody"), (d.events || []).map((e) => el("tr", {class: "event"},
    el("td", {}, e.time), el("td", {class: `status ${e.event.replace("job_", "")}`}, e.event), el("td", {}, e.node || "-"),
    el("td", {}, e.attempt ?? "-"), el("td", {class: e.error ? "error" : ""}, e.error || ""))));
  document.getElementById("events-note").textContent = d.events_complete ? ""
    : "Older events have left the event stream (GPUFLEET_EVENTS_MAX), or there were too many to look through: the list may be incomplete.";
  document.getElementById("input").textContent = d.input + (d.input_truncated ? "\n…" : "");
  const full = document.getElementById("fullinput");
  full.hidden = !d.input_truncated;
  full.textContent = `show all of the input (${d.input_chars} characters)`;
  const failed = !!d.error;
  document.getElementById("outcome-title").textContent = failed ? "Error" : "Result";
  document.getElementById("outcome").textContent = failed ? (d.traceback || d.error)
    : (d.result === undefined ? "(no result yet)" : JSON.stringify(d.result, null, 2));
}

let wholeInput = false;
document.addEventListener("click", (e) => {
  if (e.target.id === "fullinput") { e.preventDefault(); wholeInput = true; tick(); }
});

const filter = document.getElementById("filter");
if (filter) {
  const params = new URLSearchParams(location.search);
  filter.status.value = params.get("status") || "";
  filter.q.value = params.get("q") || "";
  filter.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (filter.status.value) p.set("status", filter.status.value);
    if (filter.q.value) p.set("q", filter.q.value);
    location.search = p.toString();
  });
}

const renderers = {fleet: renderFleet, batches: renderBatches, batch: renderBatch, job: renderJob};
let timer = null;

async function tick() {
  clearTimeout(timer);
  const render = renderers[page];
  if (!render) return;
  const params = new URLSearchParams(location.search);
  if (page === "job" && wholeInput) params.set("full", "1");
  try {
    const reply = await fetch(`${body.dataset.api}?${params}`, {credentials: "same-origin"});
    const data = await reply.json();
    if (!reply.ok) throw new Error(data.error || `HTTP ${reply.status}`);
    render(data);
    if (page === "fleet") await renderHistory();
    const stamp = document.getElementById("updated");
    stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
    stamp.dataset.count = String(Number(stamp.dataset.count || 0) + 1);
  } catch (err) {
    message(`could not refresh: ${err.message}`, true);
  }
  timer = setTimeout(tick, refreshMs);
}

tick();
