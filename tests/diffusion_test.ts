import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setBackend, setSeed } from "../backend.ts";
import { Diffusion, type NoiseModel } from "../diffusion.ts";

await setBackend("cpu");

Deno.test("ᾱ_t is the running product of 1 - β_t, β linear from 1e-4 to 0.02", () => {
  const d = new Diffusion();
  assert.equal(d.beta.length, 1000);
  assert.ok(Math.abs(d.beta[0] - 1e-4) < 1e-12 && Math.abs(d.beta[999] - 0.02) < 1e-12);
  let prod = 1;
  for (let t = 0; t < 1000; t++) {
    prod *= 1 - d.beta[t];
    assert.ok(Math.abs(d.alphaHat[t] - prod) < 1e-12);
    assert.equal(d.alpha[t], 1 - d.beta[t]);
  }
  d.dispose();
});

Deno.test("q(x_t|x_0) has mean √ᾱ_t·x_0 and variance 1-ᾱ_t (Eq. 4) over many draws", async () => {
  setSeed(1);
  const d = new Diffusion({ imgSize: 8 });
  for (const step of [0, 250, 999]) {
    const x0 = tf.fill([500, 8, 8, 3], 0.7) as tf.Tensor4D;
    const t = tf.fill([500], step, "int32") as tf.Tensor1D;
    const [xt, eps] = d.noiseImages(x0, t);
    const { mean, variance } = tf.moments(xt);
    const [m, v] = [(await mean.data())[0], (await variance.data())[0]];
    assert.ok(Math.abs(m - Math.sqrt(d.alphaHat[step]) * 0.7) < 0.01, `mean at t=${step}: ${m}`);
    assert.ok(Math.abs(v - (1 - d.alphaHat[step])) < 0.01 * (1 - d.alphaHat[step]) + 1e-4, `variance at t=${step}: ${v}`);
    // x_t is exactly √ᾱ·x_0 + √(1-ᾱ)·ε for the returned ε
    const rebuilt = x0.mul(Math.sqrt(d.alphaHat[step])).add(eps.mul(Math.sqrt(1 - d.alphaHat[step])));
    assert.ok((await rebuilt.sub(xt).abs().max().data())[0] < 1e-5);
    tf.dispose([x0, t, xt, eps, mean, variance, rebuilt]);
  }
  d.dispose();
});

Deno.test("training timesteps are uniform over all T steps, 0 and T-1 included", async () => {
  const d = new Diffusion({ noiseSteps: 1000 });
  const t = d.sampleTimesteps(20000);
  const values = Array.from(await t.data());
  assert.equal(Math.min(...values), 0);
  assert.equal(Math.max(...values), 999);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  assert.ok(Math.abs(mean - 499.5) < 10, `mean ${mean}`);
  t.dispose();
  d.dispose();
});

/** A model whose prediction is known: a constant for the unconditional call, another per label. */
const fakeModel: NoiseModel = {
  forward: (x, _t, labels) =>
    tf.tidy(() => labels ? tf.onesLike(x).mul(labels.toFloat().add(1).reshape([-1, 1, 1, 1])) : tf.zerosLike(x).sub(0.5)),
};

Deno.test("classifier-free guidance: lerp from the unconditional to the conditional prediction", async () => {
  const d = new Diffusion({ imgSize: 8 });
  const x = tf.zeros([2, 8, 8, 3]) as tf.Tensor4D;
  const t = tf.tensor1d([5, 5], "int32");
  const y = tf.tensor1d([0, 2], "int32"); // conditional predictions 1 and 3, unconditional -0.5
  for (const [scale, expected] of [[1, [1, 3]], [3, [-0.5 + 3 * 1.5, -0.5 + 3 * 3.5]], [0, [1, 3]], [0.5, [0.25, 1.25]]]) {
    const eps = d.predictNoise(fakeModel, x, t, y, scale as number);
    const data = await eps.data();
    assert.deepEqual([data[0], data[8 * 8 * 3]], expected, `cfgScale ${scale}`);
    eps.dispose();
  }
  tf.dispose([x, t, y]);
  d.dispose();
});

Deno.test("Algorithm 2 step: x_{t-1} mean matches the formula; sampling is repeatable with a seed", async () => {
  // With ε_θ = 0 the chain is x_{t-1} = x_t/√α_t + √β_t·z: the final image depends only on the seed.
  const zero: NoiseModel = { forward: (x) => tf.zerosLike(x) };
  const d = new Diffusion({ imgSize: 8, noiseSteps: 5 });
  setSeed(42);
  const a = await d.sample(zero, 3, { cfgScale: 0 });
  setSeed(42);
  const b = await d.sample(zero, 3, { cfgScale: 0 });
  setSeed(43);
  const c = await d.sample(zero, 3, { cfgScale: 0 });
  assert.ok(a instanceof Uint8Array);
  assert.equal(a.length, 3 * 8 * 8 * 3);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  // One step by hand from x_T = 0-noise: noiseSteps 1 means x_0 = (x_T - (1-α)/√(1-ᾱ)·ε)/√α with no noise added.
  const one = new Diffusion({ imgSize: 8, noiseSteps: 1, betaStart: 0.02, betaEnd: 0.02 });
  const half: NoiseModel = { forward: (x) => x.mul(0.5) }; // ε = x/2 → x_0 = x·(1 - 0.02/√0.02·0.5)/√0.98
  setSeed(7);
  const out = await one.sample(half, 1, { cfgScale: 0 });
  setSeed(7);
  const xT = tf.randomNormal([1, 8, 8, 3], 0, 1, "float32", (await import("../backend.ts")).nextSeed());
  const k = (1 - 0.02 / Math.sqrt(0.02) * 0.5) / Math.sqrt(0.98);
  const expected = await xT.mul(k).clipByValue(-1, 1).add(1).mul(127.5).round().data();
  assert.deepEqual(Array.from(out), Array.from(expected));
  tf.dispose(xT);
  for (const x of [d, one]) x.dispose();
});
