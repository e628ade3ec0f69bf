// The page's live part: the cluster table every 2 s (/api/cluster, Patroni's view) and the
// charts of the last hour every 15 s (/api/charts, from Prometheus), without reloading.
"use strict";

const CLUSTER_EVERY = 2000;
const CHARTS_EVERY = 15000;
const COLORS = ["#1b7837", "#2166ac", "#b2182b", "#762a83", "#e08214", "#35978f"];
const charts = {};  // name -> {plot, names}; window.pgclusterCharts for the browser test
window.pgclusterCharts = charts;

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  return td;
}

async function refreshCluster() {
  const updated = document.getElementById("cluster-updated");
  try {
    const answer = await fetch("/api/cluster", {cache: "no-store"});
    const data = await answer.json();
    const rows = data.members.map((m) => {
      const tr = document.createElement("tr");
      tr.className = m.role;
      for (const value of [m.name, m.host, m.role_name, m.state, m.timeline, m.lag]) {
        tr.appendChild(cell(value));
      }
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(data.error || "no Patroni REST API answered");
      td.colSpan = 6;
      tr.appendChild(td);
      rows.push(tr);
    }
    document.getElementById("members").replaceChildren(...rows);
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}` +
      (data.error ? ` (${data.error})` : "");
  } catch (error) {
    updated.textContent = `Not updated since ${new Date().toLocaleTimeString()}: ${error}`;
  }
}

// 12345678 bytes -> "11.8 MiB"; rows/s as they are.
function human(value, unit) {
  if (value === null || value === undefined) return "";
  if (unit !== "bytes") return String(Math.round(value * 100) / 100);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
  return `${Math.round(value * 10) / 10} ${units[i]}`;
}

function chartOptions(name, chart, names, width) {
  const series = [{}].concat(names.map((label, i) => ({
    label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
    ...(name === "leader" ? {paths: uPlot.paths.stepped({align: 1}), points: {show: false}} : {}),
  })));
  const axes = [{}, {size: 80, values: (_, ticks) => ticks.map((t) => human(t, chart.unit))}];
  if (name === "leader") {
    // One row per member: the line is at the member that led.
    axes[1] = {size: 110, splits: () => names.map((_, i) => i + 1),
               values: (_, ticks) => ticks.map((t) => names[t - 1] || "")};
  }
  return {width, height: 220, series, axes,
          scales: name === "leader" ? {y: {range: [0.5, names.length + 0.5]}} : {}};
}

function chartRows(name, chart, names) {
  return [chart.times].concat(names.map((label, i) => chart.series[label].map(
    (v) => (name === "leader" ? (v === null ? null : i + 1) : v))));
}

function drawChart(name, chart) {
  const names = Object.keys(chart.series);
  let box = document.getElementById(`chart-${name}`);
  if (!box) {
    box = document.createElement("div");
    box.className = "chart";
    box.id = `chart-${name}`;
    const title = document.createElement("h3");
    title.textContent = `${chart.title}`;
    box.appendChild(title);
    document.getElementById("charts").appendChild(box);
  }
  const data = chartRows(name, chart, names);
  const known = charts[name];
  if (known && known.names.join() === names.join()) {
    known.plot.setData(data);
    return;
  }
  if (known) known.plot.destroy();
  const width = Math.min(460, document.body.clientWidth);
  charts[name] = {plot: new uPlot(chartOptions(name, chart, names, width), data, box), names};
}

async function refreshCharts() {
  const status = document.getElementById("charts-status");
  try {
    const answer = await fetch("/api/charts", {cache: "no-store"});
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.error || answer.statusText);
    for (const [name, chart] of Object.entries(data.charts)) drawChart(name, chart);
    status.textContent = `Charts of the last ${data.minutes} minutes, updated ` +
      new Date().toLocaleTimeString();
  } catch (error) {
    status.textContent = `${error.message || error}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refreshCluster();
  refreshCharts();
  setInterval(refreshCluster, CLUSTER_EVERY);
  setInterval(refreshCharts, CHARTS_EVERY);
});
