// The traffic every k6 script sends, its thresholds and its summary, in one place.
//
// One iteration is one request, so an arrival rate is a request rate. The mix is exact rather
// than random: iteration i takes slot (i * 37) % 100 of the table below, and 37 is coprime with
// 100, so every 100 consecutive iterations of a scenario hold exactly MIX_* of each type.

import http from 'k6/http';
import exec from 'k6/execution';

export const TYPES = ['redirect', 'unknown', 'create', 'update'];

const REDIRECT_STATUSES = [301, 302, 307, 308];
const EXPECTED = {
  redirect: http.expectedStatuses(...REDIRECT_STATUSES),
  unknown: http.expectedStatuses(404),
  create: http.expectedStatuses(201),
  update: http.expectedStatuses(200),
};
// The placeholder host links point at; k6 never follows a redirect, so it is never contacted.
const TARGET = 'https://example.com';
const CODE_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
// Thresholds written only so that the summary carries the submetric; they cannot fail.
const REPORT_ONLY = new Set(['count>=0', 'rate>=0', 'p(99)>=0']);

export function env(name, fallback) {
  const value = __ENV[name];
  return value === undefined || value === '' ? fallback : value;
}

export function number(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    throw new Error(`${name} must be a non-negative number, got ${JSON.stringify(raw)}`);
  }
  return value;
}

export function integer(name, fallback) {
  return Math.round(number(name, fallback));
}

// The settings shared by every script; each script reads its own rates and durations.
export const config = {
  baseUrl: env('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, ''),
  apiKey: env('API_KEY', ''),
  zipfS: number('ZIPF_S', 1.0),
  mix: {
    redirect: integer('MIX_REDIRECT', 95),
    unknown: integer('MIX_UNKNOWN', 2),
    create: integer('MIX_CREATE', 2),
    update: integer('MIX_UPDATE', 1),
  },
  timeout: env('REQUEST_TIMEOUT', '10s'),
  failedMax: number('FAILED_MAX', 0.001),
  droppedMax: integer('DROPPED_MAX', 0),
  p99: {
    redirect: number('P99_REDIRECT_MS', 500),
    unknown: number('P99_UNKNOWN_MS', 500),
    create: number('P99_CREATE_MS', 1000),
    update: number('P99_UPDATE_MS', 1000),
  },
  maxVUs: integer('MAX_VUS', 1000),
  resultsDir: env('RESULTS_DIR', 'results/k6').replace(/\/+$/, ''),
  summaryFile: env('SUMMARY_FILE', ''),
  phases: parsePhases(env('PHASES', '')),
};

// Phases to tag requests with when PHASES is not set; call before baseOptions().
export function defaultPhases(spec) {
  if (config.phases.length === 0) {
    config.phases = parsePhases(spec);
  }
}

const SLOTS = buildSlots(config.mix);

function buildSlots(mix) {
  const total = TYPES.reduce((sum, type) => sum + mix[type], 0);
  if (total !== 100) {
    throw new Error(
      `MIX_REDIRECT + MIX_UNKNOWN + MIX_CREATE + MIX_UPDATE must be 100, got ${total}`,
    );
  }
  const slots = [];
  for (const type of TYPES) {
    for (let i = 0; i < mix[type]; i += 1) {
      slots.push(type);
    }
  }
  return slots;
}

// "baseline@0,instance-down@30": phase names and the second (after setup) each one starts.
function parsePhases(raw) {
  if (raw === '') {
    return [];
  }
  return raw.split(',').map((part) => {
    const [name, at] = part.split('@');
    const start = Number(at);
    if (!/^[a-z0-9-]+$/.test(name) || !Number.isFinite(start)) {
      throw new Error(`PHASES: bad entry ${JSON.stringify(part)} (want name@seconds)`);
    }
    return { name, start };
  });
}

// --- options ---------------------------------------------------------------------------

// The options every script shares; `scenarios` and extra thresholds are the script's own.
export function baseOptions(scenarios, extraThresholds) {
  const thresholds = {
    http_req_failed: [`rate<${config.failedMax}`],
    dropped_iterations: [`count<=${config.droppedMax}`],
  };
  for (const type of TYPES) {
    thresholds[`http_req_duration{type:${type}}`] = [`p(99)<${config.p99[type]}`];
    thresholds[`http_req_failed{type:${type}}`] = ['rate>=0'];
    thresholds[`http_reqs{type:${type}}`] = ['count>=0'];
    for (const phase of config.phases) {
      const tags = `phase:${phase.name},type:${type}`;
      thresholds[`http_req_duration{${tags}}`] = ['p(99)>=0'];
      thresholds[`http_req_failed{${tags}}`] = ['rate>=0'];
      thresholds[`http_reqs{${tags}}`] = ['count>=0'];
    }
  }
  thresholds['http_req_duration{traffic:mix}'] = ['p(99)>=0'];
  thresholds['http_req_failed{traffic:mix}'] = ['rate>=0'];
  thresholds['http_reqs{traffic:mix}'] = ['count>=0'];
  for (const phase of config.phases) {
    thresholds[`http_req_duration{phase:${phase.name}}`] = ['p(99)>=0'];
    thresholds[`http_req_failed{phase:${phase.name}}`] = ['rate>=0'];
    thresholds[`http_reqs{phase:${phase.name}}`] = ['count>=0'];
  }
  return {
    scenarios,
    thresholds: Object.assign(thresholds, extraThresholds || {}),
    // We measure the shortener, not the targets: a redirect's 30x is the answer.
    maxRedirects: 0,
    discardResponseBodies: true,
    setupTimeout: '180s',
    summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
    // No per-URL tag: one time series per short code would cost k6 memory and CPU.
    systemTags: ['status', 'method', 'name', 'scenario', 'expected_response', 'error_code'],
  };
}

// An arrival-rate scenario's VUs: PRE_VUS (default `preAllocated`) made before the test, up
// to MAX_VUS (default 1000). An iteration due while every VU is busy is dropped, and a VU that
// k6 has to make mid-test costs it time, so a spike's VUs are best all made beforehand.
export function vus(preAllocated) {
  return {
    preAllocatedVUs: Math.min(integer('PRE_VUS', preAllocated), config.maxVUs),
    maxVUs: config.maxVUs,
  };
}

// --- setup -----------------------------------------------------------------------------

function apiParams(type) {
  return {
    headers: { Authorization: `Bearer ${config.apiKey}`, 'Content-Type': 'application/json' },
    tags: { type, name: type === 'update' ? 'PATCH /api/v1/links/{code}' : 'POST /api/v1/links' },
    responseCallback: EXPECTED[type],
    timeout: config.timeout,
  };
}

// Creates `count` links through the API and returns their codes, most popular first.
export function seedLinks(count) {
  if (config.apiKey === '') {
    throw new Error('API_KEY is required: the links are created with it');
  }
  const codes = [];
  const batch = 50;
  for (let first = 0; first < count; first += batch) {
    const requests = [];
    for (let i = first; i < Math.min(first + batch, count); i += 1) {
      const params = Object.assign(apiParams('create'), {
        responseType: 'text',
        tags: { name: 'seed POST /api/v1/links' },
      });
      const body = JSON.stringify({ url: `${TARGET}/k6/seed/${i}?ref=k6` });
      requests.push(['POST', `${config.baseUrl}/api/v1/links`, body, params]);
    }
    for (const response of http.batch(requests)) {
      if (response.status !== 201) {
        throw new Error(`seeding failed: ${response.status} ${response.body}`);
      }
      codes.push(JSON.parse(response.body).code);
    }
  }
  return codes;
}

// The setup() of every script: seed SEED links (default `seed`), then mark the start that
// PHASES are counted from.
export function setupTraffic(seed) {
  const codes = seedLinks(integer('SEED', seed));
  const startedAtMs = Date.now();
  // A runner that times faults against PHASES reads this line from k6's log.
  console.log(`K6_STARTED_AT_MS=${startedAtMs}`);
  return { codes, startedAtMs };
}

// --- the iteration ---------------------------------------------------------------------

let cumulative = null; // Zipf CDF over the seeded ranks, built once per VU

function zipfCdf(n, s) {
  const weights = [];
  let total = 0;
  for (let rank = 1; rank <= n; rank += 1) {
    total += 1 / Math.pow(rank, s);
    weights.push(total);
  }
  return weights.map((w) => w / total);
}

function zipfIndex(n) {
  if (cumulative === null || cumulative.length !== n) {
    cumulative = zipfCdf(n, config.zipfS);
  }
  const u = Math.random();
  let low = 0;
  let high = n - 1;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (cumulative[mid] < u) {
      low = mid + 1;
    } else {
      high = mid;
    }
  }
  return low;
}

function randomCode(length) {
  let code = '';
  for (let i = 0; i < length; i += 1) {
    code += CODE_ALPHABET[Math.floor(Math.random() * CODE_ALPHABET.length)];
  }
  return code;
}

function phaseAt(startedAtMs) {
  const elapsed = (Date.now() - startedAtMs) / 1000;
  let current = config.phases[0].name;
  for (const phase of config.phases) {
    if (phase.start <= elapsed) {
      current = phase.name;
    }
  }
  return current;
}

function tagged(type, name, data) {
  const tags = { traffic: 'mix', type, name };
  if (config.phases.length > 0) {
    tags.phase = phaseAt(data.startedAtMs);
  }
  return tags;
}

// The default function of every script: one request of the type this iteration's slot says.
export function traffic(data) {
  const type = SLOTS[(exec.scenario.iterationInTest * 37) % 100];
  const codes = data.codes;
  if (type === 'redirect') {
    const code = codes[zipfIndex(codes.length)];
    http.get(`${config.baseUrl}/${code}`, {
      tags: tagged(type, 'GET /{code}', data),
      responseCallback: EXPECTED.redirect,
      redirects: 0,
      timeout: config.timeout,
    });
  } else if (type === 'unknown') {
    // 16 random characters: never a code that exists, and never the same one twice.
    http.get(`${config.baseUrl}/${randomCode(16)}`, {
      tags: tagged(type, 'GET /{unknown}', data),
      responseCallback: EXPECTED.unknown,
      redirects: 0,
      timeout: config.timeout,
    });
  } else if (type === 'create') {
    const params = apiParams(type);
    params.tags = tagged(type, params.tags.name, data);
    const body = JSON.stringify({ url: `${TARGET}/k6/new/${randomCode(10)}` });
    http.post(`${config.baseUrl}/api/v1/links`, body, params);
  } else {
    const params = apiParams(type);
    params.tags = tagged(type, params.tags.name, data);
    const code = codes[Math.floor(Math.random() * codes.length)];
    const body = JSON.stringify({ url: `${TARGET}/k6/updated/${code}/${randomCode(6)}` });
    http.patch(`${config.baseUrl}/api/v1/links/${code}`, body, params);
  }
}

// --- the summary -----------------------------------------------------------------------

function metricValues(data, name) {
  const metric = data.metrics[name];
  return metric === undefined ? {} : metric.values;
}

function stats(data, filter) {
  const suffix = filter === '' ? '' : `{${filter}}`;
  const duration = metricValues(data, `http_req_duration${suffix}`);
  const failed = metricValues(data, `http_req_failed${suffix}`);
  const requests = metricValues(data, `http_reqs${suffix}`);
  return {
    requests: requests.count || 0,
    failed: failed.passes || 0,
    failed_rate: failed.rate || 0,
    p50_ms: duration.med === undefined ? null : duration.med,
    p95_ms: duration['p(95)'] === undefined ? null : duration['p(95)'],
    p99_ms: duration['p(99)'] === undefined ? null : duration['p(99)'],
    max_ms: duration.max === undefined ? null : duration.max,
  };
}

function thresholdResults(data) {
  const results = [];
  for (const name of Object.keys(data.metrics).sort()) {
    const thresholds = data.metrics[name].thresholds || {};
    for (const expression of Object.keys(thresholds)) {
      if (!REPORT_ONLY.has(expression)) {
        results.push({ metric: name, threshold: expression, ok: thresholds[expression].ok });
      }
    }
  }
  return results;
}

// The figures a reader wants from `data`, k6's own summary object; `activeS` is how long the
// scenarios send traffic (the run's own duration also counts setup and teardown).
export function report(script, data, activeS) {
  const durationS = data.state.testRunDurationMs / 1000;
  const all = stats(data, 'traffic:mix');
  const types = {};
  for (const type of TYPES) {
    types[type] = stats(data, `type:${type}`);
  }
  const phases = config.phases.map((phase, i) => {
    const next = config.phases[i + 1];
    const byType = {};
    for (const type of TYPES) {
      byType[type] = stats(data, `phase:${phase.name},type:${type}`);
    }
    return Object.assign(
      { name: phase.name, start_s: phase.start, end_s: next === undefined ? null : next.start },
      stats(data, `phase:${phase.name}`),
      { types: byType },
    );
  });
  const thresholds = thresholdResults(data);
  return {
    script,
    finished_at: new Date().toISOString(),
    base_url: config.baseUrl,
    duration_s: durationS,
    active_s: activeS,
    seeded_links: data.setup_data ? data.setup_data.codes.length : null,
    mix_percent: config.mix,
    requests: all.requests,
    requests_per_s: activeS > 0 ? all.requests / activeS : 0,
    iterations: metricValues(data, 'iterations').count || 0,
    dropped_iterations: metricValues(data, 'dropped_iterations').count || 0,
    vus_peak: metricValues(data, 'vus').max || 0,
    vus_allocated: metricValues(data, 'vus_max').max || 0,
    all,
    types,
    phases,
    thresholds,
    thresholds_ok: thresholds.every((t) => t.ok),
  };
}

function fixed(value, digits) {
  return value === null || value === undefined ? '-' : value.toFixed(digits);
}

function pad(text, width) {
  const s = String(text);
  return s.length >= width ? s : ' '.repeat(width - s.length) + s;
}

function row(label, s) {
  return (
    `  ${label.padEnd(22)}${pad(s.requests, 9)}${pad(s.failed, 8)}` +
    `${pad(`${(s.failed_rate * 100).toFixed(3)}%`, 10)}${pad(fixed(s.p50_ms, 1), 10)}` +
    `${pad(fixed(s.p95_ms, 1), 10)}${pad(fixed(s.p99_ms, 1), 10)}${pad(fixed(s.max_ms, 1), 10)}`
  );
}

const HEADER =
  `  ${''.padEnd(22)}${pad('requests', 9)}${pad('failed', 8)}${pad('failed%', 10)}` +
  `${pad('p50 ms', 10)}${pad('p95 ms', 10)}${pad('p99 ms', 10)}${pad('max ms', 10)}`;

// A text summary in the spirit of k6's own (which handleSummary replaces).
export function textReport(r, extraLines) {
  const lines = [
    '',
    `  k6 ${r.script}: ${r.base_url}, ${r.duration_s.toFixed(1)} s, ` +
      `${r.requests} requests (${r.requests_per_s.toFixed(1)}/s over ${r.active_s} s), ` +
      `${r.dropped_iterations} dropped iterations, ` +
      `${r.vus_peak} VUs at most busy (${r.vus_allocated} allocated)`,
    '',
    '  THRESHOLDS',
  ];
  for (const t of r.thresholds) {
    lines.push(`    ${t.ok ? 'ok  ' : 'FAIL'} ${t.metric}: ${t.threshold}`);
  }
  lines.push('', HEADER);
  for (const type of TYPES) {
    lines.push(row(type, r.types[type]));
  }
  lines.push(row('all', r.all));
  if (r.phases.length > 0) {
    lines.push('', '  BY PHASE (seconds after setup)', HEADER);
    for (const phase of r.phases) {
      const span = `${phase.start_s}-${phase.end_s === null ? 'end' : phase.end_s}`;
      lines.push(row(`${phase.name} ${span}`, phase));
      lines.push(row('  redirect', phase.types.redirect));
    }
  }
  for (const line of extraLines || []) {
    lines.push(line);
  }
  lines.push('', `  ${r.thresholds_ok ? 'all thresholds passed' : 'SOME THRESHOLDS FAILED'}`, '');
  return lines.join('\n');
}

function summaryPath(script) {
  if (config.summaryFile !== '') {
    return config.summaryFile;
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  return `${config.resultsDir}/${script}-${stamp}.json`;
}

// handleSummary for `script`, whose scenarios send traffic for `activeS` seconds: the JSON
// report (with k6's data) to a file, the text to stdout. `extend(data, r)` may add figures to
// the report and return more text lines.
export function summaryHandler(script, activeS, extend) {
  return function handleSummary(data) {
    const r = report(script, data, activeS);
    const extraLines = extend === undefined ? [] : extend(data, r);
    const path = summaryPath(script);
    const out = {};
    out[path] = JSON.stringify(Object.assign({ report: r }, { k6: data }), null, 1);
    out.stdout = `${textReport(r, extraLines)}  summary written to ${path}\n\n`;
    return out;
  };
}
