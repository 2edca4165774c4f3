// Load: the expected busy-hour rate, held steady.
//
//   k6 run -e BASE_URL=... -e API_KEY=... -e RATE=500 -e DURATION=60 k6/load.js
//
// RATE (requests/s, default 500) reached over RAMP (s, default 10) and held for DURATION
// (s, default 60); SEED (links, default 1000); PRE_VUS, MAX_VUS (default 200, 1000).

import {
  baseOptions,
  integer,
  setupTraffic,
  summaryHandler,
  traffic,
  vus,
} from './lib/shortener.js';

const RATE = integer('RATE', 500);
const RAMP = integer('RAMP', 10);
const DURATION = integer('DURATION', 60);

export const options = baseOptions({
  load: Object.assign(
    {
      executor: 'ramping-arrival-rate',
      startRate: Math.max(1, Math.round(RATE / 10)),
      timeUnit: '1s',
      stages: [
        { target: RATE, duration: `${RAMP}s` },
        { target: RATE, duration: `${DURATION}s` },
      ],
      gracefulStop: '10s',
    },
    vus(200),
  ),
});

export function setup() {
  return setupTraffic(1000);
}

export default traffic;

export const handleSummary = summaryHandler('load', RAMP + DURATION);
