// Stress: a staircase of arrival rates, each held for STEP s, to find the knee: the highest
// rate this set-up serves within the thresholds, and the first one it does not.
//
//   k6 run -e BASE_URL=... -e API_KEY=... -e STEPS=100,200,400,800,1600 -e STEP=15 k6/stress.js
//
// STEPS (requests/s, comma-separated, default 200,400,600,800,1000,1200,1400,1600,1800,2000,
// 2500), STEP (s per step, default 15); SEED (links, default 1000); PRE_VUS, MAX_VUS (default
// 1000, 1000).
// A step breaks when its redirect p99 reaches P99_REDIRECT_MS, its failure rate FAILED_MAX,
// it drops more than 1% of its iterations (no VU free: the service is not keeping up), or
// it achieves under 95% of its rate. With STOP_AT_KNEE (default 1), a step that fails over 5%
// of its requests or drops over 5% of its iterations aborts the run: the steps above it could
// only be worse. The run's thresholds break past the knee, so k6 exits 99 by design.

import {
  baseOptions,
  config,
  env,
  integer,
  setupTraffic,
  summaryHandler,
  traffic,
  vus,
} from './lib/shortener.js';

const STEPS = env('STEPS', '200,400,600,800,1000,1200,1400,1600,1800,2000,2500')
  .split(',')
  .map((rate) => {
    const value = Number(rate);
    if (!Number.isInteger(value) || value < 1) {
      throw new Error(`STEPS: bad rate ${JSON.stringify(rate)}`);
    }
    return value;
  });
const STEP = integer('STEP', 15);
// Steps do not overlap: each one's last iterations get GAP s to finish before the next starts,
// so one pool of VUs serves them all and no step inherits the previous one's queue.
const GAP = 2;
const STOP_AT_KNEE = integer('STOP_AT_KNEE', 1) === 1;

function stepName(i) {
  return `step${String(i + 1).padStart(2, '0')}`;
}

const scenarios = {};
const thresholds = {};
STEPS.forEach((rate, i) => {
  const name = stepName(i);
  scenarios[name] = Object.assign(
    {
      executor: 'constant-arrival-rate',
      rate,
      timeUnit: '1s',
      duration: `${STEP}s`,
      startTime: `${i * (STEP + GAP)}s`,
      gracefulStop: `${GAP}s`,
    },
    vus(1000),
  );
  const abortAbove = Math.max(1, Math.round(0.05 * rate * STEP));
  thresholds[`http_req_duration{scenario:${name},type:redirect}`] = ['p(99)>=0'];
  thresholds[`http_req_duration{scenario:${name}}`] = ['p(99)>=0'];
  thresholds[`http_reqs{scenario:${name}}`] = ['count>=0'];
  thresholds[`http_req_failed{scenario:${name}}`] = STOP_AT_KNEE
    ? [{ threshold: 'rate<0.05', abortOnFail: true, delayAbortEval: '3s' }]
    : ['rate>=0'];
  thresholds[`dropped_iterations{scenario:${name}}`] = STOP_AT_KNEE
    ? [{ threshold: `count<${abortAbove}`, abortOnFail: true }]
    : ['count>=0'];
});

export const options = baseOptions(scenarios, thresholds);

export function setup() {
  return setupTraffic(1000);
}

export default traffic;

function values(data, name) {
  const metric = data.metrics[name];
  return metric === undefined ? {} : metric.values;
}

// Per step: the rate asked for and achieved, latency, failures, drops; then the knee.
function steps(data, r) {
  const rows = STEPS.map((rate, i) => {
    const name = stepName(i);
    const requests = values(data, `http_reqs{scenario:${name}}`).count || 0;
    const failed = values(data, `http_req_failed{scenario:${name}}`);
    const redirect = values(data, `http_req_duration{scenario:${name},type:redirect}`);
    const all = values(data, `http_req_duration{scenario:${name}}`);
    const dropped = values(data, `dropped_iterations{scenario:${name}}`).count || 0;
    const ran = requests > 0;
    const row = {
      step: name,
      target_per_s: rate,
      achieved_per_s: requests / STEP,
      requests,
      failed_rate: failed.rate || 0,
      dropped,
      redirect_p50_ms: ran && redirect.med !== undefined ? redirect.med : null,
      redirect_p99_ms: ran && redirect['p(99)'] !== undefined ? redirect['p(99)'] : null,
      all_p99_ms: ran && all['p(99)'] !== undefined ? all['p(99)'] : null,
      ran,
      breaks: [],
    };
    if (!row.ran) {
      row.breaks.push('not run');
      return row;
    }
    if (row.redirect_p99_ms !== null && row.redirect_p99_ms >= config.p99.redirect) {
      row.breaks.push(`redirect p99 >= ${config.p99.redirect} ms`);
    }
    if (row.failed_rate >= config.failedMax) {
      row.breaks.push(`failed >= ${config.failedMax * 100}%`);
    }
    if (dropped > 0.01 * rate * STEP) {
      row.breaks.push('dropped > 1%');
    }
    if (row.achieved_per_s < 0.95 * rate) {
      row.breaks.push('achieved < 95%');
    }
    return row;
  });
  const firstBreak = rows.findIndex((row) => row.breaks.length > 0);
  const lastHeld = firstBreak === -1 ? rows.length - 1 : firstBreak - 1;
  const knee = {
    holds_at_per_s: lastHeld < 0 ? null : rows[lastHeld].target_per_s,
    breaks_at_per_s: firstBreak === -1 ? null : rows[firstBreak].target_per_s,
    why: firstBreak === -1 ? 'no step broke' : rows[firstBreak].breaks.join(', '),
  };
  r.steps = rows;
  r.knee = knee;

  const fmt = (value, digits, width) =>
    (value === null ? '-' : value.toFixed(digits)).padStart(width);
  const perS = (rate) => (rate === null ? 'no step' : `${rate}/s`);
  const lines = ['', `  STAIRCASE (${STEP} s a step)`];
  lines.push(
    '  step    target/s  achieved/s  failed%  dropped  redirect p50  redirect p99  all p99',
  );
  for (const row of rows) {
    const cells = [
      row.step,
      String(row.target_per_s).padStart(8),
      fmt(row.achieved_per_s, 1, 10),
      fmt(row.failed_rate * 100, 3, 7),
      String(row.dropped).padStart(7),
      fmt(row.redirect_p50_ms, 1, 12),
      fmt(row.redirect_p99_ms, 1, 12),
      fmt(row.all_p99_ms, 1, 7),
      row.breaks.join(', '),
    ];
    lines.push(`  ${cells.join('  ')}`);
  }
  lines.push(
    '',
    `  KNEE: holds at ${perS(knee.holds_at_per_s)}, breaks at ${perS(knee.breaks_at_per_s)}` +
      ` (${knee.why})`,
  );
  return lines;
}

export const handleSummary = summaryHandler('stress', STEPS.length * STEP, steps);
