import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setBackend, setSeed } from "../kernels/backend.ts";
import { Diffusion } from "../diffusion.ts";
import { UNet } from "../modules.ts";
import { AdamW } from "../run/adamw.ts";
import { trainStep } from "../train.ts";

await setBackend("wasm");

Deno.test("trainStep is Algorithm 1: the MSE of ε at the drawn t, then one AdamW step on its gradient", async () => {
  setSeed(0);
  const model = new UNet({ width: 8 });
  const lr = 1e-3, weightDecay = 0.01;
  const opt = new AdamW(model, { lr, weightDecay });
  const diffusion = new Diffusion({ imageSize: 16 });
  const x0 = tf.randomUniform([3, 16, 16, 3], -1, 1, "float32", 1) as tf.Tensor4D;
  setSeed(5); // by hand: t ~ U{0..T-1}, ε ~ N(0, I), x_t (Eq. 4), ‖ε - ε_θ(x_t, t)‖² and its gradient
  const t = diffusion.sampleTimesteps(3);
  const [xt, eps] = diffusion.noiseImages(x0, t);
  const { value, grads } = tf.variableGrads(() => tf.losses.meanSquaredError(eps, model.forward(xt, t)) as tf.Scalar);
  const before = new Map([...model.weights].map(([n, w]) => [n, w.clone()]));
  setSeed(5); // trainStep draws the same t and ε
  const loss = trainStep(model, diffusion, opt, x0);
  assert.ok(Math.abs((await loss.data())[0] - (await value.data())[0]) < 1e-6);
  // AdamW's first step: m̂ = g, v̂ = g², so w ← w·(1 - lr·λ) - lr·g/(|g| + ε) ≈ w·(1 - lr·λ) - lr·sign(g)
  for (const [name, w] of model.weights) {
    const g = grads[w.name], w0 = before.get(name)!;
    const expected = tf.tidy(() => w0.mul(1 - lr * weightDecay).sub(g.div(g.abs().add(1e-8)).mul(lr)));
    const diff = tf.tidy(() => expected.sub(w).abs().max().dataSync()[0]);
    assert.ok(diff < 1e-6, `${name}: max |diff| ${diff}`);
    expected.dispose();
  }
  tf.dispose([x0, t, xt, eps, value, loss, ...Object.values(grads), ...before.values()]);
  model.dispose();
  opt.dispose();
  diffusion.dispose();
});

Deno.test("overfit: trainStep on a fixed batch of a tiny model lowers its loss", async () => {
  setSeed(0);
  const model = new UNet({ width: 8 });
  const opt = new AdamW(model, { lr: 2e-3 });
  const diffusion = new Diffusion({ imageSize: 16, noiseSteps: 100 });
  const x0 = tf.randomUniform([4, 16, 16, 3], -1, 1, "float32", 1) as tf.Tensor4D;
  const losses: number[] = [];
  for (let i = 0; i < 60; i++) {
    const loss = trainStep(model, diffusion, opt, x0); // fresh t and ε each step
    losses.push((await loss.data())[0]);
    loss.dispose();
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b) / xs.length;
  const first = mean(losses.slice(0, 10)), last = mean(losses.slice(-10));
  assert.ok(last < 0.85 * first, `mean loss of the first 10 steps ${first}, of the last 10 ${last}`);
  x0.dispose();
  model.dispose();
  opt.dispose();
  diffusion.dispose();
});

Deno.test("no tensor leak: tf.memory().numTensors after step 10 equals after step 2", async () => {
  setSeed(0);
  const model = new UNet({ width: 8, numClasses: 2 });
  const opt = new AdamW(model);
  const diffusion = new Diffusion({ imageSize: 16 });
  const x0 = tf.randomUniform([2, 16, 16, 3], -1, 1) as tf.Tensor4D;
  const y = tf.tensor1d([0, 1], "int32");
  let after2 = 0;
  for (let step = 1; step <= 10; step++) {
    const loss = trainStep(model, diffusion, opt, x0, step % 2 ? y : null);
    assert.ok(Number.isFinite((await loss.data())[0]));
    loss.dispose();
    if (step === 2) after2 = tf.memory().numTensors;
  }
  assert.equal(tf.memory().numTensors, after2);
  tf.dispose([x0, y]);
  model.dispose();
  opt.dispose();
  diffusion.dispose();
});

Deno.test("sampling a tiny model: shape, dtype, range, and the same seed gives the same images", async () => {
  setSeed(3);
  const model = new UNet({ width: 8, numClasses: 2 });
  const diffusion = new Diffusion({ imageSize: 16, noiseSteps: 8 });
  const before = tf.memory().numTensors;
  const draw = async (seed: number) => {
    setSeed(seed);
    return await diffusion.sample(model, 2, { labels: [0, 1], cfgScale: 3 });
  };
  const a = await draw(9), b = await draw(9), c = await draw(10);
  assert.ok(a instanceof Uint8Array);
  assert.equal(a.length, 2 * 16 * 16 * 3);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.ok(new Set(a).size > 10, "not a constant image");
  assert.equal(tf.memory().numTensors, before);
  model.dispose();
  diffusion.dispose();
});
