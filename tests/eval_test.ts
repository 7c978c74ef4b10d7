import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { join } from "node:path";
import { mulberry32, setBackend, setSeed } from "../kernels/backend.ts";
import {
  Classifier,
  classify,
  collect,
  featureStats,
  frechetDistance,
  kthNeighbourRadii,
  meanTerm,
  precisionRecall,
  rotations,
  symmetricEigen,
  trainClassifier,
} from "../commands/classifier.ts";
import { evaluate, medianScores, METRIC, realPairs } from "../commands/eval.ts";
import { DEFAULTS } from "../run/config.ts";
import { loadRun } from "../run/trained.ts";
import { torchStateDict, writeTorchFile } from "../weights/pytorch.ts";
import { train } from "../train.ts";
import { loadDataset } from "../utils.ts";
import { quiet } from "./helpers.ts";

await setBackend("wasm");

/** n draws of N(μ, A·Aᵀ), row after row. */
function gaussian(n: number, mu: number[], A: number[][], seed: number): Float64Array {
  const d = mu.length, rand = mulberry32(seed), out = new Float64Array(n * d);
  const normal = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand()); // Box-Muller
  for (let i = 0; i < n; i++) {
    const z = mu.map(normal);
    for (let j = 0; j < d; j++) out[i * d + j] = mu[j] + A[j].reduce((s, a, k) => s + a * z[k], 0);
  }
  return out;
}

const diag = (v: number[]) => v.map((x, i) => v.map((_, j) => i === j ? x : 0));

Deno.test("Jacobi eigen-decomposition rebuilds a symmetric matrix: A = V·diag(λ)·Vᵀ", () => {
  const rand = mulberry32(4), n = 12;
  const A = Array.from({ length: n }, () => new Array(n).fill(0));
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) A[i][j] = A[j][i] = rand() - 0.5;
  const { values, vectors: V } = symmetricEigen(A);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const rebuilt = values.reduce((s, l, k) => s + V[i][k] * l * V[j][k], 0);
      assert.ok(Math.abs(rebuilt - A[i][j]) < 1e-10, `A[${i}][${j}]: ${rebuilt} vs ${A[i][j]}`);
    }
  }
});

Deno.test("Fréchet distance of a feature set with itself is ~0, and grows with a shift of the mean", () => {
  const tiny = featureStats([0, 1, 2, 5], 2, 2); // two 2-d vectors: mean, and the unbiased covariance (n - 1)
  assert.deepEqual([Array.from(tiny.mu), tiny.sigma.map((r) => Array.from(r))], [[1, 3], [[2, 4], [4, 8]]]);
  const d = 16, rand = mulberry32(5), mix = Array.from({ length: d }, () => Array.from({ length: d }, rand));
  const f = gaussian(300, new Array(d).fill(0.5), mix, 1);
  const s = featureStats(f, 300, d);
  const trace = s.sigma.reduce((t, r, i) => t + r[i], 0);
  assert.ok(frechetDistance(s, s) < 1e-8 * trace, `${frechetDistance(s, s)}`);
  const shifted = { mu: s.mu.map((m) => m + 0.5), sigma: s.sigma };
  const fd = frechetDistance(s, shifted);
  assert.ok(Math.abs(fd - d * 0.25) < 1e-8 * trace, `${fd}`); // only ‖μ1-μ2‖² is left
});

Deno.test("the floor's draws are disjoint real sets, and each score is its median over the draws", () => {
  const pairs = realPairs(10, 4, 3, 7);
  assert.equal(pairs.length, 3);
  for (const [a, b] of pairs) {
    assert.deepEqual([a.length, b.length, new Set([...a, ...b]).size], [4, 4, 8]); // disjoint
    assert.ok([...a, ...b].every((i) => Number.isInteger(i) && i >= 0 && i < 10));
  }
  assert.notDeepEqual(pairs[0], pairs[1]); // fresh draws
  assert.deepEqual(realPairs(10, 4, 3, 7), pairs); // repeatable
  const s = (fd: number, p: number) => ({ frechetDistance: fd, meanTerm: fd / 2, precision: p, recall: 1 - p });
  // each score on its own: the middle one of an odd count, the mean of the two middle ones of an even count
  const odd = medianScores([s(9, 0.1), s(1, 0.5), s(2, 0.9)]);
  assert.deepEqual(odd, { frechetDistance: 2, meanTerm: 1, precision: 0.5, recall: 0.5 });
  const even = medianScores([s(9, 0.1), s(1, 0.2), s(2, 0.9), s(4, 0.6)]);
  assert.deepEqual(even, { frechetDistance: 3, meanTerm: 1.5, precision: 0.4, recall: 0.6 });
});

Deno.test("Fréchet distance matches the closed form of two Gaussians", () => {
  // Diagonal: Tr(Σ1 + Σ2 - 2(Σ1Σ2)^½) = Σ (√a_i - √b_i)².
  const [mu1, mu2, a, b] = [[0, 1, 2], [1, 1, 0], [1, 4, 0.25], [9, 1, 0.25]];
  const exact = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0; // ‖μ1-μ2‖² = 5, trace term 5
  assert.ok(Math.abs(frechetDistance({ mu: mu1, sigma: diag(a) }, { mu: mu2, sigma: diag(b) }) - exact) < 1e-9);
  assert.equal(meanTerm({ mu: mu1, sigma: diag(a) }, { mu: mu2, sigma: diag(b) }), 5); // 1 + 0 + 4
  // The same covariances turned by one rotation R: the distance does not change.
  const c = Math.cos(0.7), s = Math.sin(0.7), R = [[c, -s, 0], [s, c, 0], [0, 0, 1]];
  const turn = (v: number[]) => R.map((ri) => R.map((rj) => v.reduce((t, x, k) => t + ri[k] * x * rj[k], 0)));
  const rot = frechetDistance({ mu: mu1, sigma: turn(a) }, { mu: mu2, sigma: turn(b) });
  assert.ok(Math.abs(rot - exact) < 1e-9, `${rot}`);
  // Covariances that do not commute, 2x2: Tr √M = √(Tr M + 2√det M) for M = Σ1Σ2 (its eigenvalues are ≥ 0).
  const S1 = [[2, 0.8], [0.8, 1]], S2 = [[1, -0.3], [-0.3, 0.5]];
  const M = [0, 1].map((i) => [0, 1].map((j) => S1[i][0] * S2[0][j] + S1[i][1] * S2[1][j]));
  const trSqrt = Math.sqrt(M[0][0] + M[1][1] + 2 * Math.sqrt(M[0][0] * M[1][1] - M[0][1] * M[1][0]));
  const expected = 3 + 1.5 - 2 * trSqrt;
  assert.ok(Math.abs(frechetDistance({ mu: [0, 0], sigma: S1 }, { mu: [0, 0], sigma: S2 }) - expected) < 1e-9);
  // From samples: 20 000 draws of each Gaussian give the closed form within sampling error.
  const fa = gaussian(20000, mu1, diag(a.map(Math.sqrt)), 2), fb = gaussian(20000, mu2, diag(b.map(Math.sqrt)), 3);
  const sampled = frechetDistance(featureStats(fa, 20000, 3), featureStats(fb, 20000, 3));
  assert.ok(Math.abs(sampled - exact) < 0.1, `sampled ${sampled} vs ${exact}`);
});

Deno.test("rotations: four counter-clockwise quarter turns, with their index as the target", async () => {
  const x = tf.tensor4d([1, 2, 3, 4], [1, 2, 2, 1]); // [[1, 2], [3, 4]]
  const [turned, k] = rotations(x);
  assert.deepEqual(Array.from(await turned.data()), [1, 2, 3, 4, 2, 4, 1, 3, 4, 3, 2, 1, 3, 1, 4, 2]);
  assert.deepEqual(Array.from(await k.data()), [0, 1, 2, 3]);
  tf.dispose([x, turned, k]);
});

Deno.test("the classifier reaches ≥ 95 % on held-out builtin:shapes (800 training images, 16 px)", async () => {
  setSeed(0);
  const train = collect(await loadDataset("builtin:shapes", 16, { count: 800, seed: 1 }), 800, 1);
  const heldOut = collect(await loadDataset("builtin:shapes", 16, { count: 500, seed: 2 }), 500, 2);
  const clf = new Classifier(16, 10);
  await trainClassifier(clf, train, "labels", { epochs: 15 });
  const { accuracy, features, predicted } = await classify(clf, heldOut, "labels");
  assert.ok(accuracy >= 0.95, `held-out accuracy ${accuracy}`);
  assert.equal(features.length, 500 * clf.featureDim);
  assert.equal(predicted.filter((p, i) => p === heldOut.y[i]).length / 500, accuracy);
  clf.dispose();
});

Deno.test("end to end: a tiny conditional run with EMA is scored (the 2×2); eval.json and index.html; cached classifier", async () => {
  const out = await Deno.makeTempDir();
  await train(
    {
      ...DEFAULTS,
      data: "builtin:shapes",
      conditional: true,
      emaBeta: 0.9,
      emaStart: 0,
      imageSize: 16,
      width: 8,
      maxSteps: 3,
      count: 64,
      noiseSteps: 20,
      nSamples: 10,
      backend: "wasm",
      out,
      name: "tiny",
    },
    { log: quiet },
  );
  const run = join(out, "tiny"), opts = { run, n: 2, sampler: "ddim", sampleSteps: 5, seed: 1 } as const;
  const report = await evaluate({ ...opts, log: quiet });
  const saved = JSON.parse(await Deno.readTextFile(join(run, "eval.json")));
  assert.deepEqual(saved, JSON.parse(JSON.stringify(report)));
  assert.ok(saved.metric.startsWith(METRIC) && !JSON.stringify(saved).replace("Not an FID", "").includes("FID"));
  assert.deepEqual([saved.step, saved.sampler, saved.sampleSteps, saved.schedule], [3, "ddim", 5, "linear"]);
  assert.equal(saved.classifier.task, "the data set's classes");
  assert.ok(saved.classifier.heldOutAccuracy >= 0 && saved.classifier.heldOutAccuracy <= 1);
  assert.deepEqual(saved.results.map((r: { cfgScale: number }) => r.cfgScale), [0, 3, 0, 3]);
  assert.deepEqual(saved.results.map((r: { weights: string }) => r.weights), ["model", "model", "ema", "ema"]);
  assert.equal(saved.weights, "model and ema");
  for (const r of saved.results) {
    assert.equal(r.n, 20); // 2 per class
    assert.ok(Number.isFinite(r.frechetDistance) && r.frechetDistance >= 0);
    assert.ok(r.precision >= 0 && r.precision <= 1 && r.recall >= 0 && r.recall <= 1);
    assert.deepEqual(Object.keys(r.classAccuracy.perClass).length, 10);
    const mean = Object.values(r.classAccuracy.perClass as Record<string, number>).reduce((s, v) => s + v, 0) / 10;
    assert.ok(Math.abs(mean - r.classAccuracy.total) < 1e-3);
  }
  assert.ok(Number.isFinite(saved.reference.frechetDistance));
  assert.deepEqual([saved.reference.n, saved.reference.k], [20, 3]); // two sets of 20 of the 64 real images
  const [lo, hi] = saved.reference.frechetDistanceRange; // of the 20 draws
  assert.ok(
    saved.reference.draws === 20 && lo <= saved.reference.frechetDistance && saved.reference.frechetDistance <= hi,
  );
  assert.ok(saved.reference.precision > 0 && saved.reference.recall > 0);
  const html = await Deno.readTextFile(join(run, "index.html"));
  assert.ok(html.includes("Scores (deno task eval)") && html.includes("eval_ddim5_cfg3.png"));
  assert.ok(html.includes("eval_ddim5_ema_cfg3.png") && html.includes("eval_2x2.png") && html.includes("real vs real"));
  assert.ok(html.includes("median over 20 random draws") && html.includes(`(‖μ1-μ2‖² ${saved.results[0].meanTerm})`));
  // the 2×2 figure: 2·10 class rows and 2·2 columns of 16 px images, a white row and column between the panels
  const png = Deno.readFileSync(join(run, "samples", "eval_2x2.png")), view = new DataView(png.buffer);
  assert.deepEqual([view.getUint32(16), view.getUint32(20)], [5 * 18 + 2, 21 * 18 + 2]);
  // A second evaluation loads the cached classifier and, with the same seed, gives the same scores.
  const lines: string[] = [];
  const again = await evaluate({ ...opts, log: (l) => lines.push(l) });
  assert.ok(lines.some((l) => l.startsWith(`classifier: ${join(run, "classifier")}`)), lines.join("\n"));
  // without --holdout: no independent judge, and one line that says what it needs
  assert.equal(lines.filter((l) => l.includes("independent judge")).length, 1);
  assert.ok(lines.some((l) => l.includes("the independent judge needs a run trained with --holdout")));
  assert.deepEqual(saved.judge, { none: "the independent judge needs a run trained with --holdout" });
  const scores = (r: typeof report) => r.results.map((x) => [x.frechetDistance, x.classAccuracy]);
  assert.deepEqual(scores(again), scores(report));
  await Deno.remove(out, { recursive: true });
});

Deno.test("k-NN precision and recall (k = 3) of a case by hand: each radius reaches the 3rd other neighbour", () => {
  // 2-D vectors on a line (x, 0). Real 0, 1, 2, 3, 10; generated -2.5, 2.5, 4, 5, 6.
  const line = (xs: number[]) => Float32Array.from(xs.flatMap((x) => [x, 0]));
  const real = line([0, 1, 2, 3, 10]), fake = line([-2.5, 2.5, 4, 5, 6]);
  // real radii: 0 → (1, 2, 3, 10) → 3; 1 → (1, 1, 2, 9) → 2; 2 → 2; 3 → 3; 10 → (7, 8, 9, 10) → 9 (squared below)
  assert.deepEqual(Array.from(kthNeighbourRadii(real, 5, 2, 3)), [9, 4, 4, 9, 81]);
  // generated radii: -2.5 → (5, 6.5, 7.5, 8.5) → 7.5; 2.5 → 3.5; 4 → 2; 5 → 2.5; 6 → (1, 2, 3.5, 8.5) → 3.5
  assert.deepEqual(Array.from(kthNeighbourRadii(fake, 5, 2, 3)), [56.25, 12.25, 4, 6.25, 12.25]);
  // precision: -2.5 is 2.5 from 0 (radius 3), 6 is 3 from 3 (radius 3): all five inside. (With the vector itself
  // counted as its first neighbour, radius 0 → 2 and 10 → 8 would leave -2.5 out: 0.8.)
  // recall: 10 is 4 from 6 (radius 3.5) and 12.5 from -2.5 (7.5): out; the others in: 0.8. (With the 4th neighbour,
  // 6's radius 8.5 would take 10 in: 1.)
  assert.deepEqual(precisionRecall(real, 5, fake, 5, 2, 3), { precision: 1, recall: 0.8 });
  assert.deepEqual(precisionRecall(fake, 5, real, 5, 2, 3), { precision: 0.8, recall: 1 }); // the roles swap
  assert.throws(() => kthNeighbourRadii(real, 3, 2, 3), RangeError); // 3 vectors have only 2 others
});

/** A one-class run that trains in seconds. */
const LAND = { imageSize: 16, width: 8, maxSteps: 2, count: 40, noiseSteps: 10, nSamples: 4, backend: "wasm" } as const;

Deno.test("end to end, one-class data: rotations; one unguided result; the run's clipping; one classifier whatever the seed; a PyTorch file scores the same", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...DEFAULTS, ...LAND, data: "builtin:landscapes", out, name: "land", clip: false }, { log: quiet });
  const report = await evaluate({ run: join(out, "land"), n: 6, sampler: "ddpm", log: quiet });
  assert.equal(report.clip, false); // sampled as the run's grids are
  assert.equal(report.classifier.task, "rotation by 0/90/180/270° (one-class data)");
  assert.equal(report.classifier.heldOutImages, 4);
  assert.equal(report.results.length, 1);
  assert.deepEqual(Object.keys(report.results[0]).sort(), [
    "cfgScale",
    "frechetDistance",
    "meanTerm",
    "n",
    "precision",
    "recall",
    "seconds",
    "weights",
  ]);
  assert.deepEqual([report.results[0].cfgScale, report.results[0].n, report.sampler], [null, 6, "ddpm"]);
  assert.ok(report.results[0].meanTerm <= report.results[0].frechetDistance); // a part of it
  assert.ok(!("sampleSteps" in report));
  const clipped = await evaluate({ run: join(out, "land"), n: 6, sampler: "ddpm", clip: true, log: quiet });
  assert.equal(clipped.clip, true);
  assert.notEqual(clipped.results[0].frechetDistance, report.results[0].frechetDistance); // other samples
  // another --seed: other samples, the same classifier (trained afresh here: the cache removed)
  await Deno.remove(join(out, "land", "classifier"), { recursive: true });
  const reseeded = await evaluate({ run: join(out, "land"), n: 6, sampler: "ddpm", seed: 3, log: quiet });
  assert.deepEqual(reseeded.reference, report.reference);
  // the run's weights as a PyTorch file, scored with --weights on the run's data: the same samples, the same score
  const { model } = await loadRun(join(out, "land")), file = join(out, "land.safetensors");
  await writeTorchFile(file, await torchStateDict(model.weights));
  model.dispose();
  const fromFile = await evaluate({ run: join(out, "land"), n: 6, sampler: "ddpm", weights: file, log: quiet });
  assert.equal(fromFile.weights, file);
  assert.equal(fromFile.results[0].frechetDistance, report.results[0].frechetDistance);
  await Deno.remove(out, { recursive: true });
});

Deno.test("eval defaults: DDIM, n sized to --seconds and announced before sampling, progress; --full is DDPM", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...DEFAULTS, ...LAND, data: "builtin:landscapes", out, name: "land" }, { log: quiet });
  const run = join(out, "land"), lines: string[] = [];
  const report = await evaluate({ run, seconds: 1, log: (l) => lines.push(l) });
  assert.deepEqual([report.sampler, report.sampleSteps, report.eta, report.clip], ["ddim", 10, 0, true]); // (the run samples with DDPM)
  assert.equal(report.n.chosenBy, "sized to 1 s of sampling on this machine");
  assert.equal(report.results[0].n, report.n.value);
  assert.ok(report.n.value === 8 || report.n.estimatedSeconds <= 1, JSON.stringify(report.n)); // 8: the least
  const announced = lines.findIndex((l) => /^sampling 1 × \d+ images, 10 DDIM steps \(η 0\): about \d+s/.test(l));
  const progress = lines.findIndex((l) => /^sampling \d+\/10 steps [\d.]+ steps\/s ETA \d+s$/.test(l));
  assert.ok(announced >= 0 && progress > announced, lines.join("\n"));
  assert.ok(lines[announced].includes(`1 × ${report.n.value} images`));
  const saved = JSON.parse(await Deno.readTextFile(join(run, "eval.json")));
  assert.deepEqual(saved.n, report.n);

  const full = await evaluate({ run, full: true, n: 4, log: () => {} }); // (--full alone: 200 samples)
  assert.deepEqual([full.sampler, full.n.value, full.n.chosenBy, full.results[0].n], ["ddpm", 4, "--n", 4]);
  assert.ok(!("sampleSteps" in full));
  await Deno.remove(out, { recursive: true });
});
