import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setBackend } from "../kernels/backend.ts";
import { EMA } from "../ema.ts";
import { Module } from "../modules.ts";

await setBackend("cpu");

class Tiny extends Module {
  constructor(values: number[]) {
    super();
    this.param("w", tf.tensor1d(values));
  }
}
const read = async (m: Module) => Array.from(await m.weights.get("w")!.data());

Deno.test("EMA copies the model during warm-up, then w_ema = β·w_ema + (1-β)·w", async () => {
  const model = new Tiny([1, 2]), ema = new Tiny([0, 0]);
  const e = new EMA(0.5);
  e.stepEma(ema, model, 2);
  assert.deepEqual(await read(ema), [1, 2]); // warm-up step 0: reset
  model.weights.get("w")!.assign(tf.tensor1d([3, 4]));
  e.stepEma(ema, model, 2);
  assert.deepEqual(await read(ema), [3, 4]); // warm-up step 1: reset
  model.weights.get("w")!.assign(tf.tensor1d([5, 8]));
  e.stepEma(ema, model, 2);
  assert.deepEqual(await read(ema), [4, 6]); // 0.5·[3, 4] + 0.5·[5, 8]
  e.stepEma(ema, model, 2);
  assert.deepEqual(await read(ema), [4.5, 7]);
  assert.equal(e.step, 4);
  // the EMA copy does not follow later changes of the model by reference
  model.weights.get("w")!.assign(tf.tensor1d([0, 0]));
  assert.deepEqual(await read(ema), [4.5, 7]);
});

Deno.test("EMA with the default β = 0.995 and no tensor leak", async () => {
  const model = new Tiny([1]), ema = new Tiny([0]);
  const e = new EMA();
  e.stepEma(ema, model, 0);
  const before = tf.memory().numTensors;
  for (let i = 0; i < 5; i++) e.stepEma(ema, model, 0);
  assert.equal(tf.memory().numTensors, before);
  const [w] = await read(ema);
  assert.ok(Math.abs(w - (1 - 0.995 ** 6)) < 1e-6, `${w}`);
});
