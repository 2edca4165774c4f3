// The stats view of one link: visits over time as a uPlot chart, and the top referrers,
// countries, browsers, systems and devices. Built with DOM APIs and textContent only.

const $ = (id) => document.getElementById(id);

const HOUR = 3600e3;
const DAY = 24 * HOUR;
// Period -> [length, bucket size]: at most 1,000 buckets, as the API allows.
const PERIODS = {
  "48h": [48 * HOUR, "hour"],
  "7d": [7 * DAY, "day"],
  "30d": [30 * DAY, "day"],
  "90d": [90 * DAY, "day"],
};
const BREAKDOWNS = [
  ["referrers", "Referrers"],
  ["countries", "Countries"],
  ["browsers", "Browsers"],
  ["os", "Systems"],
  ["devices", "Devices"],
];
const CHART_HEIGHT = 240;

let shown = null; // { code, key } of the link on view
let chart = null;

async function fetchStats(code, key, period) {
  const [length, interval] = PERIODS[period];
  const to = new Date();
  const from = new Date(to.getTime() - length);
  const query = new URLSearchParams({ from: from.toISOString(), to: to.toISOString(), interval });
  let response;
  try {
    response = await fetch(`/api/v1/links/${encodeURIComponent(code)}/stats?${query}`, {
      headers: { Accept: "application/json", Authorization: `Bearer ${key}` },
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new Error("The service could not be reached. Check your connection and try again.");
  }
  if (response.ok) return response.json();
  let detail = `The service answered ${response.status}.`;
  try {
    detail = (await response.json()).detail || detail;
  } catch {
    // Not a problem document: the status says enough.
  }
  throw new Error(detail);
}

function cssColor(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

function drawChart(stats) {
  const box = $("stats-chart");
  const data = [
    stats.series.map((bucket) => Date.parse(bucket.start) / 1000),
    stats.series.map((bucket) => bucket.visits),
    stats.series.map((bucket) => bucket.bots),
  ];
  const accent = cssColor("--accent", "#4f46e5");
  const muted = cssColor("--muted", "#5b6178");
  const line = cssColor("--line", "#dfe2ec");
  const axis = { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line } };
  const options = {
    width: Math.max(280, box.clientWidth),
    height: CHART_HEIGHT,
    scales: { x: { time: true }, y: { range: (_, min, max) => [0, Math.max(4, max)] } },
    series: [
      {},
      { label: "Visits", stroke: accent, fill: `${accent}22`, width: 2, points: { show: false } },
      { label: "Bots", stroke: muted, width: 1.5, dash: [5, 4], points: { show: false } },
    ],
    axes: [axis, { ...axis, values: (_, ticks) => ticks.map((tick) => tick.toLocaleString()) }],
  };
  if (chart) chart.destroy();
  box.replaceChildren();
  chart = new window.uPlot(options, data, box);
}

function breakdown(title, rows, total) {
  const part = document.createElement("section");
  part.className = "breakdown";
  const heading = document.createElement("h3");
  heading.textContent = title;
  part.append(heading);
  if (!rows.length) {
    const none = document.createElement("p");
    none.className = "hint";
    none.textContent = "No visits in this period.";
    part.append(none);
    return part;
  }
  const table = document.createElement("table");
  const caption = document.createElement("caption");
  caption.className = "visually-hidden";
  caption.textContent = `${title} by visits, most first`;
  const body = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    const label = document.createElement("span");
    label.className = "breakdown-value";
    label.textContent = row.value;
    label.title = row.value;
    const bar = document.createElement("span");
    bar.className = "breakdown-bar";
    bar.setAttribute("aria-hidden", "true");
    // A property set from script, not a style attribute: the CSP allows it.
    bar.style.width = `${total ? Math.max(2, (100 * row.visits) / total) : 0}%`;
    name.append(label, bar);
    const count = document.createElement("td");
    count.className = "num";
    count.textContent = row.visits.toLocaleString();
    tr.append(name, count);
    body.append(tr);
  }
  table.append(caption, body);
  part.append(table);
  return part;
}

async function load() {
  if (!shown) return;
  const { code, key } = shown;
  $("stats-status").textContent = "Loading…";
  let stats;
  try {
    stats = await fetchStats(code, key, $("stats-range").value);
  } catch (error) {
    $("stats-status").textContent = `Could not load the stats of ${code}: ${error.message}`;
    return;
  }
  if (!shown || shown.code !== code) return; // another link was opened meanwhile
  $("stats-status").textContent = "";
  $("stats-visits").textContent = stats.visits.toLocaleString();
  $("stats-bots").textContent = stats.bots.toLocaleString();
  drawChart(stats);
  $("stats-breakdowns").replaceChildren(
    ...BREAKDOWNS.map(([field, title]) => breakdown(title, stats[field], stats.visits)),
  );
}

function open(event) {
  shown = event.detail;
  $("stats-code").textContent = shown.code;
  $("stats").hidden = false;
  $("stats-title").focus();
  $("stats").scrollIntoView({ block: "start" });
  load();
}

function close() {
  shown = null;
  $("stats").hidden = true;
  if (chart) chart.destroy();
  chart = null;
  $("links-title").focus();
}

document.addEventListener("shortener:stats", open);
$("stats-range").addEventListener("change", load);
$("stats-close").addEventListener("click", close);
window.addEventListener("resize", () => {
  if (chart) chart.setSize({ width: Math.max(280, $("stats-chart").clientWidth), height: CHART_HEIGHT });
});
