import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { AdamW } from "../run/adamw.ts";
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
