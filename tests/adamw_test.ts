import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { AdamW, clipByGlobalNorm } from "../run/adamw.ts";
import { setBackend } from "../kernels/backend.ts";
import { Module } from "../modules.ts";

await setBackend("wasm");

Deno.test("AdamW: one step by hand (decoupled weight decay, bias-corrected moments)", async () => {
  class One extends Module {
    constructor() {
      super();
      this.param("w", tf.tensor1d([1, -2]));
    }
  }
  const m = new One();
  const opt = new AdamW(m, { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 });
  const grads = new Map([["w", tf.tensor1d([0.5, 0])]]);
  opt.update(grads);
  // m̂ = g, v̂ = g², so the step is lr·g/(|g| + ε) = ±lr (or 0 where g = 0); the decay is w·lr·λ.
  const [a, b] = await m.weights.get("w")!.data();
  assert.ok(Math.abs(a - (1 * (1 - 0.1 * 0.01) - 0.1)) < 1e-6, `${a}`);
  assert.ok(Math.abs(b - -2 * (1 - 0.1 * 0.01)) < 1e-6, `${b}`);
  opt.update(grads); // second step: m̂ = v̂ / |g| again ⇒ another full lr step
  const [a2] = await m.weights.get("w")!.data();
  assert.ok(Math.abs(a2 - ((0.899) * (1 - 0.001) - 0.1)) < 1e-6, `${a2}`);
  tf.dispose([...grads.values()]);
});

Deno.test("AdamW's lr schedule by hand: linear warm-up, then constant or a half cosine to 0", () => {
  class One extends Module {
    constructor() {
      super();
      this.param("w", tf.tensor1d([1]));
    }
  }
  const m = new One();
  const constant = new AdamW(m, { lr: 1, warmupSteps: 10 });
  assert.deepEqual([1, 5, 10, 11, 1000].map((s) => constant.lrAt(s)), [0.1, 0.5, 1, 1, 1]);
  const cosine = new AdamW(m, { lr: 1, warmupSteps: 10, decaySteps: 110 }); // 100 steps of decay after the warm-up
  const lrs = [5, 10, 35, 60, 85, 110, 200].map((s) => cosine.lrAt(s));
  const want = [0.5, 1, (1 + Math.SQRT1_2) / 2, 0.5, (1 - Math.SQRT1_2) / 2, 0, 0]; // ½(1 + cos(π·k/100))
  assert.ok(lrs.every((x, i) => Math.abs(x - want[i]) < 1e-12), `${lrs}`);
  assert.equal(new AdamW(m, { lr: 0.3 }).lrAt(7), 0.3); // the tutorial's constant lr
  for (const o of [constant, cosine]) o.dispose();
  m.dispose();
});

Deno.test("clipByGlobalNorm: one scale for all gradients, min(1, max/‖g‖), ‖g‖ over all of them", async () => {
  const grads = new Map([["a", tf.tensor1d([3, 0])], ["b", tf.tensor1d([0, 4])]]); // ‖g‖ = 5
  const before = tf.memory().numTensors;
  const clipped = clipByGlobalNorm(grads, 1);
  assert.equal(tf.memory().numTensors, before + 2);
  assert.ok(Math.abs((await clipped.get("a")!.data())[0] - 0.6) < 1e-6);
  assert.ok(Math.abs((await clipped.get("b")!.data())[1] - 0.8) < 1e-6);
  const loose = clipByGlobalNorm(grads, 10); // under the limit: unchanged
  assert.deepEqual(Array.from(await loose.get("b")!.data()), [0, 4]);
  tf.dispose([...grads.values(), ...clipped.values(), ...loose.values()]);
});
