// Spike: a quiet rate jumps tenfold or more within seconds, holds, and falls back.
//
//   k6 run -e BASE_URL=... -e API_KEY=... -e BASE_RATE=100 -e PEAK_RATE=1000 k6/spike.js
//
// BASE_RATE (requests/s, default 100) for WARM s (default 10), up to PEAK_RATE (default 1000)
// in RAMP s (default 5), held for HOLD s (default 30), back down in RAMP s and held for COOL s
// (default 10). SEED (links, default 1000); PRE_VUS, MAX_VUS (default 1000, 1000). Requests
// are tagged with the phase they start in (warm, ramp-up, peak, ramp-down, cool), or with
// PHASES ("name@seconds,...", counted from the end of setup) when a chaos runner sets it.

import {
  baseOptions,
  defaultPhases,
  integer,
  setupTraffic,
  summaryHandler,
  traffic,
  vus,
} from './lib/shortener.js';

const BASE_RATE = integer('BASE_RATE', 100);
const PEAK_RATE = integer('PEAK_RATE', 1000);
const WARM = integer('WARM', 10);
const RAMP = integer('RAMP', 5);
const HOLD = integer('HOLD', 30);
const COOL = integer('COOL', 10);

if (PEAK_RATE < 10 * BASE_RATE || RAMP > 10) {
  console.warn(`not a spike: ${BASE_RATE} -> ${PEAK_RATE}/s in ${RAMP} s (want 10x within 10 s)`);
}

defaultPhases(
  [
    `warm@0`,
    `ramp-up@${WARM}`,
    `peak@${WARM + RAMP}`,
    `ramp-down@${WARM + RAMP + HOLD}`,
    `cool@${WARM + 2 * RAMP + HOLD}`,
  ].join(','),
);

export const options = baseOptions({
  spike: Object.assign(
    {
      executor: 'ramping-arrival-rate',
      startRate: BASE_RATE,
      timeUnit: '1s',
      stages: [
        { target: BASE_RATE, duration: `${WARM}s` },
        { target: PEAK_RATE, duration: `${RAMP}s` },
        { target: PEAK_RATE, duration: `${HOLD}s` },
        { target: BASE_RATE, duration: `${RAMP}s` },
        { target: BASE_RATE, duration: `${COOL}s` },
      ],
      gracefulStop: '10s',
    },
    vus(1000),
  ),
});

export function setup() {
  return setupTraffic(1000);
}

export default traffic;

export const handleSummary = summaryHandler('spike', WARM + 2 * RAMP + HOLD + COOL);
