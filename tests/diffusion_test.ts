import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { nextSeed, setBackend, setSeed } from "../kernels/backend.ts";
import { Diffusion, type NoiseModel, weightedMse } from "../diffusion.ts";

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
  const d = new Diffusion({ imageSize: 8 });
  for (const step of [0, 250, 999]) {
    const x0 = tf.fill([500, 8, 8, 3], 0.7) as tf.Tensor4D;
    const t = tf.fill([500], step, "int32") as tf.Tensor1D;
    const [xt, eps] = d.noiseImages(x0, t);
    const { mean, variance } = tf.moments(xt);
    const [m, v] = [(await mean.data())[0], (await variance.data())[0]];
    assert.ok(Math.abs(m - Math.sqrt(d.alphaHat[step]) * 0.7) < 0.01, `mean at t=${step}: ${m}`);
    assert.ok(
      Math.abs(v - (1 - d.alphaHat[step])) < 0.01 * (1 - d.alphaHat[step]) + 1e-4,
      `variance at t=${step}: ${v}`,
    );
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
    tf.tidy(() =>
      labels ? tf.onesLike(x).mul(labels.toFloat().add(1).reshape([-1, 1, 1, 1])) : tf.zerosLike(x).sub(0.5)
    ),
};

Deno.test("classifier-free guidance: lerp from the unconditional to the conditional prediction", async () => {
  const d = new Diffusion({ imageSize: 8 });
  const x = tf.zeros([2, 8, 8, 3]) as tf.Tensor4D;
  const t = tf.tensor1d([5, 5], "int32");
  const y = tf.tensor1d([0, 2], "int32"); // conditional predictions 1 and 3, unconditional -0.5
  for (
    const [scale, expected] of [[1, [1, 3]], [3, [-0.5 + 3 * 1.5, -0.5 + 3 * 3.5]], [0, [1, 3]], [0.5, [0.25, 1.25]]]
  ) {
    const eps = d.predictNoise(fakeModel, x, t, y, scale as number);
    const data = await eps.data();
    assert.deepEqual([data[0], data[8 * 8 * 3]], expected, `cfgScale ${scale}`);
    eps.dispose();
  }
  tf.dispose([x, t, y]);
  d.dispose();
});

Deno.test("Algorithm 2 at t = 1 (T = 1, no noise) by hand; sampling is repeatable with a seed", async () => {
  // With ε_θ = 0 the chain is x_{t-1} = x_t/√α_t + √β_t·z: the final image depends only on the seed.
  const zero: NoiseModel = { forward: (x) => tf.zerosLike(x) };
  const d = new Diffusion({ imageSize: 8, noiseSteps: 5 });
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
  const one = new Diffusion({ imageSize: 8, noiseSteps: 1, betaStart: 0.02, betaEnd: 0.02 });
  const half: NoiseModel = { forward: (x) => x.mul(0.5) }; // ε = x/2 → x_0 = x·(1 - 0.02/√0.02·0.5)/√0.98
  setSeed(7);
  const out = await one.sample(half, 1, { cfgScale: 0 });
  setSeed(7);
  const xT = tf.randomNormal([1, 8, 8, 3], 0, 1, "float32", nextSeed());
  const k = (1 - 0.02 / Math.sqrt(0.02) * 0.5) / Math.sqrt(0.98);
  const expected = await xT.mul(k).clipByValue(-1, 1).add(1).mul(127.5).round().data();
  assert.deepEqual(Array.from(out), Array.from(expected));
  tf.dispose(xT);
  for (const x of [d, one]) x.dispose();
});

Deno.test("Algorithm 2 at t > 1: x_{t-1} = (x_t - (1-α_t)/√(1-ᾱ_t)·ε_θ)/√α_t + σ_t·z, σ_t = √β_t", async () => {
  const d = new Diffusion({ imageSize: 8, noiseSteps: 5 });
  const half: NoiseModel = { forward: (x) => x.mul(0.5) }; // ε_θ(x_t, t) = x_t/2
  const steps: Float32Array[] = [];
  setSeed(11);
  const onStep = async (_k: number, x: tf.Tensor4D) => void steps.push(await x.data() as Float32Array);
  (await d.sampleX0(half, 2, { cfgScale: 0, clip: false, onStep })).dispose();
  setSeed(11); // by hand, from the same draws: x_T, then z at each step but the last
  let x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", nextSeed());
  for (let i = 4; i >= 0; i--) {
    const [alpha, alphaHat, beta] = [d.alpha[i], d.alphaHat[i], d.beta[i]];
    const mean = x.sub(x.mul(0.5).mul((1 - alpha) / Math.sqrt(1 - alphaHat))).div(Math.sqrt(alpha));
    const z = i > 0 ? tf.randomNormal(x.shape, 0, 1, "float32", nextSeed()) : tf.zerosLike(x);
    const next = mean.add(z.mul(Math.sqrt(beta)));
    const got = steps[4 - i], want = await next.data();
    const diff = Math.max(...want.map((v, j) => Math.abs(v - got[j])));
    assert.ok(diff < 1e-5, `step t = ${i + 1}: max |diff| ${diff}`);
    tf.dispose([x, mean, z]);
    x = next;
  }
  x.dispose();
  d.dispose();
});

// ------------------------------------------------------------ beyond the tutorial: cosine schedule, DDIM

Deno.test("cosine schedule (Nichol & Dhariwal Eq. 17): ᾱ_t = f(t)/f(0), β_t ≤ 0.999; linear stays the default", () => {
  assert.equal(new Diffusion().schedule, "linear");
  const T = 1000, d = new Diffusion({ schedule: "cosine", noiseSteps: T });
  const f = (t: number) => Math.cos((t / T + 0.008) / 1.008 * Math.PI / 2) ** 2; // written out again, not imported
  for (let i = 0; i < T; i++) assert.ok(d.beta[i] > 0 && d.beta[i] <= 0.999, `β at ${i}: ${d.beta[i]}`);
  assert.equal(d.beta[T - 1], 0.999); // f(T) = 0 would make β_T = 1: clipped
  for (let i = 0; i < T - 1; i++) { // index i is step t = i + 1; before the clipped last step ᾱ is exact
    assert.ok(
      Math.abs(d.alphaHat[i] - f(i + 1) / f(0)) < 1e-12,
      `ᾱ at t=${i + 1}: ${d.alphaHat[i]} vs ${f(i + 1) / f(0)}`,
    );
  }
  assert.ok(Math.abs(d.alphaHat[T - 1] - 0.001 * f(T - 1) / f(0)) < 1e-15);
  assert.ok(Math.abs(d.alphaHat[T / 2 - 1] - f(T / 2) / f(0)) < 1e-12 && d.alphaHat[T / 2 - 1] > 0.45); // ≈ cos²(π/4)
  d.dispose();
  assert.throws(() => new Diffusion({ schedule: "quadratic" as "linear" }), RangeError);
});

Deno.test("DDIM sub-sequence τ: evenly spaced from T-1 down to 0; all T steps when sampleSteps ≥ T", () => {
  const d = new Diffusion({ noiseSteps: 1000 });
  const tau = d.ddimTimesteps(50);
  assert.equal(tau.length, 50);
  assert.deepEqual([tau[0], tau[1], tau.at(-1)], [0, 20, 999]);
  assert.ok(tau.every((t, k) => k === 0 || t > tau[k - 1]));
  assert.deepEqual(d.ddimTimesteps(1000), Array.from({ length: 1000 }, (_, i) => i));
  assert.deepEqual(d.ddimTimesteps(5000).length, 1000);
  assert.deepEqual(d.ddimTimesteps(1), [999]);
  assert.throws(() => d.ddimTimesteps(0), RangeError);
  d.dispose();
});

Deno.test("DDIM with all T steps and η = 1 is the DDPM step with σ_t² = β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t)·β_t", async () => {
  setSeed(3);
  // x̂_0 clipped too: then DDIM's ε is the one x_t and the clipped x̂_0 imply, and its mean DDPM's μ̃_t of them
  for (const [schedule, clip] of [["linear", false], ["cosine", false], ["linear", true], ["cosine", true]] as const) {
    const d = new Diffusion({ imageSize: 4, schedule });
    const x = tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 11) as tf.Tensor4D;
    const eps = tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 12) as tf.Tensor4D; // a fake model's ε_θ
    for (const i of [0, 1, 10, 500, 998, 999]) {
      const ddpm = d.ddpmStep(x, eps, i, { clip }), ddim = d.ddimStep(x, eps, i, i - 1, { eta: 1, clip });
      const diff = (await ddim.mean.sub(ddpm.mean).abs().max().data())[0];
      const scale = (await ddpm.mean.abs().max().data())[0];
      assert.ok(
        diff < 1e-5 * Math.max(1, scale),
        `${schedule}${clip ? ", clipped" : ""} t=${i}: means differ by ${diff}`,
      );
      const betaTilde = i === 0 ? 0 : (1 - d.alphaHat[i - 1]) / (1 - d.alphaHat[i]) * d.beta[i];
      assert.ok(
        Math.abs(ddim.sigma ** 2 - betaTilde) < 1e-12,
        `${schedule} t=${i}: σ² ${ddim.sigma ** 2} vs β̃ ${betaTilde}`,
      );
      assert.equal(ddpm.sigma, i === 0 ? 0 : Math.sqrt(d.beta[i])); // the tutorial's σ_t² = β_t
      if (i > 0) assert.ok(ddpm.sigma > ddim.sigma); // β̃_t < β_t: the variants do differ
      tf.dispose([ddpm.mean, ddim.mean]);
    }
    tf.dispose([x, eps]);
    d.dispose();
  }
});

/** ε_θ that depends on x_t and t, so that the path matters. */
const xtModel: NoiseModel = {
  forward: (x, t) => tf.tidy(() => x.mul(0.3).add(t.toFloat().div(50).reshape([-1, 1, 1, 1]).sin().mul(0.2))),
};

Deno.test("DDIM η = 0 is deterministic given x_T; η = 1 and DDPM draw noise from the seed", async () => {
  const d = new Diffusion({ imageSize: 8, noiseSteps: 100 });
  const xT = tf.randomNormal([3, 8, 8, 3], 0, 1, "float32", 5) as tf.Tensor4D;
  const run = (seed: number, opts: Parameters<Diffusion["sample"]>[2]) => {
    setSeed(seed);
    return d.sample(xtModel, 3, { cfgScale: 0, xT, ...opts });
  };
  const ddim = { sampler: "ddim", sampleSteps: 10 } as const;
  const [a, b] = [await run(1, { ...ddim, eta: 0 }), await run(2, { ...ddim, eta: 0 })];
  assert.deepEqual(a, b);
  assert.ok(!xT.isDisposed); // the caller's x_T is left alone
  assert.notDeepEqual(await run(1, { ...ddim, eta: 1 }), await run(2, { ...ddim, eta: 1 }));
  assert.notDeepEqual(await run(1, { sampler: "ddpm" }), await run(2, { sampler: "ddpm" }));
  const otherXT = tf.randomNormal([3, 8, 8, 3], 0, 1, "float32", 6) as tf.Tensor4D;
  assert.notDeepEqual(await run(1, { ...ddim, eta: 0, xT: otherXT }), a);
  tf.dispose([xT, otherXT]);
  d.dispose();
});

Deno.test("DDIM's last step is x̂_0 of Eq. 12, with classifier-free guidance; same as DDPM's last step", async () => {
  // One step from x_T = 0: x_0 = (x_T - √(1-ᾱ)·ε)/√ᾱ = -√(0.02/0.98)·ε, ε = ε_u + s·(ε_c - ε_u) of fakeModel.
  const d = new Diffusion({ imageSize: 8, noiseSteps: 1, betaStart: 0.02, betaEnd: 0.02 });
  const xT = tf.zeros([2, 8, 8, 3]) as tf.Tensor4D;
  const epsCfg = [-0.5 + 0.5 * 1.5, -0.5 + 0.5 * 3.5]; // cfgScale 0.5, labels 0 and 2: conditional 1 and 3
  const expected = epsCfg.map((e) => Math.round((-Math.sqrt(0.02 / 0.98) * e + 1) * 127.5));
  for (const sampler of ["ddim", "ddpm"] as const) {
    const out = await d.sample(fakeModel, 2, { labels: [0, 2], cfgScale: 0.5, sampler, xT });
    assert.deepEqual([out[0], out[8 * 8 * 3]], expected, sampler);
    assert.ok(out.subarray(0, 8 * 8 * 3).every((v) => v === expected[0]));
  }
  xT.dispose();
  d.dispose();
});

Deno.test("sample() leaks no tensors with DDIM, and refuses bad options", async () => {
  const d = new Diffusion({ imageSize: 8, noiseSteps: 20 });
  setSeed(0);
  await d.sample(xtModel, 2, { sampler: "ddim", sampleSteps: 5, eta: 0.5, cfgScale: 0 }); // warm-up
  const before = tf.memory().numTensors;
  await d.sample(fakeModel, 2, { labels: [0, 1], sampler: "ddim", sampleSteps: 7, eta: 1 });
  assert.equal(tf.memory().numTensors, before);
  await assert.rejects(() => d.sample(xtModel, 1, { sampler: "plms" as "ddim" }), RangeError);
  await assert.rejects(() => d.sample(xtModel, 1, { sampler: "ddim", eta: -1 }), RangeError);
  await assert.rejects(() => d.sample(xtModel, 1, { sampler: "ddim", sampleSteps: 2.5 }), RangeError);
  d.dispose();
});

Deno.test("clipping x̂_0: the DDPM mean is Eq. 7's posterior mean of the clipped x̂_0, and unchanged in range", async () => {
  const d = new Diffusion({ imageSize: 4, noiseSteps: 100 });
  const i = 40, [a, ah, b, ahPrev] = [d.alpha[40], d.alphaHat[40], d.beta[40], d.alphaHat[39]];
  const x = tf.tensor4d([0.3, -2.5, 4, 0.1], [1, 2, 2, 1]), eps = tf.tensor4d([0.2, -0.1, 0.05, 0.4], [1, 2, 2, 1]);
  const x0 = await d.predictX0(x, eps, i, { clip: false }).data();
  const clipped = Array.from(x0, (v) => Math.min(1, Math.max(-1, v)));
  assert.ok(x0.some((v) => Math.abs(v) > 1) && x0.some((v) => Math.abs(v) < 1), "the case needs both");
  const mean = await d.ddpmStep(x, eps, i, { clip: true }).mean.data();
  const xs = await x.data();
  clipped.forEach((c, k) => {
    const expected = Math.sqrt(ahPrev) * b / (1 - ah) * c + Math.sqrt(a) * (1 - ahPrev) / (1 - ah) * xs[k];
    assert.ok(Math.abs(mean[k] - expected) < 1e-5, `${k}: ${mean[k]} vs ${expected}`);
  });
  // where x̂_0 is inside [-1, 1], clipping changes nothing: the same number as Algorithm 2's formula
  const plain = await d.ddpmStep(x, eps, i, { clip: false }).mean.data();
  x0.forEach((v, k) => {
    if (Math.abs(v) < 1) assert.ok(Math.abs(plain[k] - mean[k]) < 1e-5, `${k}: ${plain[k]} vs ${mean[k]}`);
    else assert.ok(Math.abs(plain[k] - mean[k]) > 1e-3);
  });
  tf.dispose([x, eps]);
  d.dispose();
});

Deno.test("onStep sees each x_t and its x̂_0 (Eq. 15); sampleX0 returns the floats sample() rounds", async () => {
  const d = new Diffusion({ imageSize: 8, noiseSteps: 50 });
  const xT = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 3) as tf.Tensor4D;
  const seen: { k: number; x: Float32Array; x0: Float32Array }[] = [];
  const opts = { cfgScale: 0, xT, sampler: "ddim", sampleSteps: 5, eta: 0 } as const;
  const x = await d.sampleX0(xtModel, 2, {
    ...opts,
    onStep: async (k, x, x0) => {
      seen.push({ k, x: await x.data() as Float32Array, x0: await x0.data() as Float32Array });
    },
  });
  assert.deepEqual(seen.map((s) => s.k), [4, 3, 2, 1, 0]);
  // each x̂_0 is Eq. 15 of the x before its step, clipped; at the last step (to ᾱ = 1) x_0 is x̂_0
  const tau = d.ddimTimesteps(5), before = [await xT.data(), ...seen.map((s) => s.x)];
  for (const [j, s] of seen.entries()) {
    const i = tau[4 - j], xt = tf.tensor4d(before[j], [2, 8, 8, 3]);
    const eps = xtModel.forward(xt, tf.fill([2], i, "int32") as tf.Tensor1D);
    const want = await d.predictX0(xt, eps, i, { clip: true }).data();
    assert.ok(want.every((v, m) => Math.abs(v - s.x0[m]) < 1e-5), `x̂_0 at step ${s.k}`);
    tf.dispose([xt, eps]);
  }
  const final = await x.data();
  assert.deepEqual(Array.from(final), Array.from(seen[4].x0));
  assert.deepEqual(await d.sample(xtModel, 2, opts), Uint8Array.from(final, (v) => Math.round((v + 1) * 127.5)));
  tf.dispose([x, xT]);
  d.dispose();
});

// T = 2 with β = (0.2, 0.6): ᾱ = (0.8, 0.32), SNR = ᾱ/(1-ᾱ) = (4, 8/17).
const small = (o = {}) => new Diffusion({ noiseSteps: 2, betaStart: 0.2, betaEnd: 0.6, imageSize: 2, ...o });
const near = (a: ArrayLike<number>, b: number[], tol = 1e-6) =>
  assert.ok(b.every((x, i) => Math.abs(a[i] - x) < tol), `${Array.from(a)} vs ${b}`);

Deno.test("min-SNR-γ weights by hand: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v; 1 without γ", () => {
  const plain = small(), eps = small({ minSnrGamma: 1 }), v = small({ minSnrGamma: 1, prediction: "v" });
  near(plain.alphaHat, [0.8, 0.32]);
  near(plain.lossWeights(), [1, 1]);
  near(eps.lossWeights(), [1 / 4, 1]); // SNR 4 > γ: γ/4; SNR 8/17 < γ: 1
  near(v.lossWeights(), [1 / 5, (8 / 17) / (25 / 17)]); // γ/(4 + 1); SNR/(SNR + 1) = ᾱ = 0.32
  near(small({ minSnrGamma: 5 }).lossWeights(), [1, 1]); // γ above every SNR: plain ε MSE
  for (const d of [plain, eps, v]) d.dispose();
});

Deno.test("the loss by hand: the ε or v target (v = √ᾱ·ε - √(1-ᾱ)·x_0), weighted per image; default plain MSE", async () => {
  const t = tf.tensor1d([0, 1], "int32");
  const ones = tf.ones([2, 2, 2, 3]) as tf.Tensor4D, zeros = tf.zeros([2, 2, 2, 3]) as tf.Tensor4D;
  const half = tf.fill([2, 2, 2, 3], 0.5) as tf.Tensor4D;
  const value = async (d: Diffusion, pred: tf.Tensor4D, x0: tf.Tensor4D, noise: tf.Tensor4D) => {
    const target = d.target(x0, noise, t), w = d.lossWeightsAt(t); // what trainStep gives lossGradients
    const loss = weightedMse(target, pred, w), out = (await loss.data())[0];
    tf.dispose([loss, target, ...(w ? [w] : [])]);
    d.dispose();
    return out;
  };
  // ε target 1, prediction 0.5: every image's error is 0.25; weights (1/4, 1) give (0.25/4 + 0.25)/2
  near([await value(small(), half, zeros, ones)], [0.25]);
  near([await value(small({ minSnrGamma: 1 }), half, zeros, ones)], [(0.25 / 4 + 0.25) / 2]);
  const mse = tf.losses.meanSquaredError(ones, half);
  near([await value(small(), half, zeros, ones)], [(await mse.data())[0]]);
  // x_0 = 1, ε = 0: v = -√(1-ᾱ), so a zero prediction's error is 1-ᾱ = (0.2, 0.68); weights (1/5, 0.32)
  near([await value(small({ prediction: "v" }), zeros, ones, zeros)], [(0.2 + 0.68) / 2]);
  near([await value(small({ prediction: "v", minSnrGamma: 1 }), zeros, ones, zeros)], [(0.2 / 5 + 0.32 * 0.68) / 2]);
  tf.dispose([t, ones, zeros, half, mse]);
});

Deno.test("v-prediction: the sampler turns v back into ε = √ᾱ·v + √(1-ᾱ)·x_t, and x̂_0 (Eq. 15) is x_0", async () => {
  setSeed(3);
  const d = small({ prediction: "v" });
  for (const i of [0, 1]) {
    const x0 = tf.randomUniform([2, 2, 2, 3], -1, 1) as tf.Tensor4D, eps = tf.randomNormal([2, 2, 2, 3]) as tf.Tensor4D;
    const t = tf.fill([2], i, "int32") as tf.Tensor1D;
    const a = d.alphaHat[i], xt = x0.mul(Math.sqrt(a)).add(eps.mul(Math.sqrt(1 - a))) as tf.Tensor4D;
    const v = d.velocity(x0, eps, t);
    const byHand = eps.mul(Math.sqrt(a)).sub(x0.mul(Math.sqrt(1 - a)));
    assert.ok((await v.sub(byHand).abs().max().data())[0] < 1e-6);
    const vModel: NoiseModel = { forward: () => v.clone() }; // a model that knows v
    const got = d.predictNoise(vModel, xt, t, null, 0), x0Hat = d.predictX0(xt, got, i, { clip: false });
    assert.ok((await got.sub(eps).abs().max().data())[0] < 1e-5, `ε at index ${i}`);
    assert.ok((await x0Hat.sub(x0).abs().max().data())[0] < 1e-5, `x̂_0 at index ${i}`);
    tf.dispose([x0, eps, t, xt, v, byHand, got, x0Hat]);
  }
  d.dispose();
});
