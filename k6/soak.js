// Soak: a moderate rate for a long while, to show leaks, drift and slow degradation.
//
//   k6 run -e BASE_URL=... -e API_KEY=... -e RATE=200 -e DURATION=1800 k6/soak.js
//
// RATE (requests/s, default 200) for DURATION s (default 600, at most 14400: four hours);
// SEED (links, default 1000); PRE_VUS, MAX_VUS (default 200, 1000).

import {
  baseOptions,
  integer,
  setupTraffic,
  summaryHandler,
  traffic,
  vus,
} from './lib/shortener.js';

const RATE = integer('RATE', 200);
const DURATION = Math.min(integer('DURATION', 600), 14400);

export const options = baseOptions({
  soak: Object.assign(
    {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION}s`,
      gracefulStop: '10s',
    },
    vus(200),
  ),
});

export function setup() {
  return setupTraffic(1000);
}

export default traffic;

export const handleSummary = summaryHandler('soak', DURATION);
