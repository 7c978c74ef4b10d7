// The hints on a slow machine: a run of more than a day, a sample grid of minutes, projected from the first units.
import assert from "node:assert/strict";
import { SLOW_RUN_SECONDS, SlowCheck, slowGridHint, slowRunHint } from "../run/progress.ts";

/** Feeds a SlowCheck units of `ms` each (after a first one of `warmupMs`) on a clock of its own; its calls. */
function check(total: number, limit: number, units: number, ms: number, warmupMs = 0) {
  let t = 0;
  const calls: number[] = [];
  const slow = new SlowCheck(total, limit, (left) => calls.push(left), 5, 20, () => t);
  for (let done = 1; done <= units; done++) {
    t += done === 1 ? warmupMs : ms;
    slow.seen(done);
  }
  return calls;
}

Deno.test("a run projected past the limit is told once, from the rate after the warm-up", () => {
  // 120 s a step after a 10-minute first one: judged after the second (20 s passed), 998 × 120 s left
  assert.deepEqual(check(1000, SLOW_RUN_SECONDS, 20, 120e3, 600e3), [998 * 120]);
  assert.deepEqual(check(1000, SLOW_RUN_SECONDS, 20, 60, 600e3), []); // 60 ms a step: a minute in all
  assert.deepEqual(check(1000, SLOW_RUN_SECONDS, 20, 60e3), []); // 60 s a step: 17 hours, under a day
  assert.deepEqual(check(100000, SLOW_RUN_SECONDS, 20, 5e3), [5 * 99995]); // 5 s a step: judged at 20 s, step 5
});

Deno.test("the units of one read-back arrive at once: judged on the next", () => {
  let t = 0;
  const calls: number[] = [];
  const slow = new SlowCheck(10000, SLOW_RUN_SECONDS, (left) => calls.push(left), 5, 20, () => t);
  slow.seen(20); // steps 1..20 read back together
  slow.seen(20);
  assert.deepEqual(calls, []);
  t += 20 * 10e3; // 20 steps of 10 s
  slow.seen(40);
  assert.deepEqual(calls, [9960 * 10]);
});

Deno.test("the slow-run line names the estimate, the backend and the ways out", () => {
  const cpu = slowRunHint(3.6e6, "wasm");
  assert.match(cpu, /about 1000h00m more on wasm/);
  for (const way of ["--backend webgpu", "deno task demo", "--image-size", "--width"]) {
    assert.ok(cpu.includes(way), way);
  }
  const gpu = slowRunHint(2e5, "webgpu");
  assert.ok(!gpu.includes("deno task demo") && gpu.includes("--image-size"), gpu);
});

Deno.test("the slow-grid line gives the estimate and the cheaper sampler's", () => {
  const line = slowGridHint(600, 1000, "ddpm");
  assert.match(line, /about 10m00s more \(1000 ddpm steps\)/);
  assert.ok(line.includes("--sampler ddim --sample-steps 50 (about 30s)"), line); // 50 of the 1000 steps
  assert.ok(slowGridHint(600, 50, "ddim").includes("fewer --sample-steps"));
});
