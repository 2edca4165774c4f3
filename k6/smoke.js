// Smoke: a few requests of every type at a low rate, to prove the set-up before a real run.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... k6/smoke.js
//
// RATE (requests/s, default 20), DURATION (s, default 10), SEED (links, default 50).

import { baseOptions, integer, setupTraffic, summaryHandler, traffic } from './lib/shortener.js';

const RATE = integer('RATE', 20);
const DURATION = integer('DURATION', 10);

export const options = baseOptions({
  smoke: {
    executor: 'constant-arrival-rate',
    rate: RATE,
    timeUnit: '1s',
    duration: `${DURATION}s`,
    preAllocatedVUs: 5,
    maxVUs: 50,
    gracefulStop: '5s',
  },
});

export function setup() {
  return setupTraffic(50);
}

export default traffic;

export const handleSummary = summaryHandler('smoke', DURATION);
