// Every core (run/threads.ts): a batch shared among 2 threads gives the 1-thread loss, gradients, step and forward pass.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setBackend, setSeed } from "../kernels/backend.ts";
import { Diffusion } from "../diffusion.ts";
import { UNet } from "../modules.ts";
import { AdamW } from "../run/adamw.ts";
import { descend, lossGradients, shares, Threads } from "../run/threads.ts";
import { trainStep } from "../train.ts";

await setBackend("wasm", () => {});

/** max |a - b| over max |a| (a and b of the same size). */
function relDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => a.sub(b).abs().max().dataSync()[0] / Math.max(a.abs().max().dataSync()[0], 1e-12));
}

/** A small conditional U-Net (seeded), a batch of 5 (shared 2 + 3) at 16 px, timesteps and labels. */
function setup(seed = 1) {
  setSeed(seed);
  const model = new UNet({ width: 8, numClasses: 3 });
  const xt = tf.randomNormal([5, 16, 16, 3], 0, 1, "float32", seed) as tf.Tensor4D;
  const noise = tf.randomNormal([5, 16, 16, 3], 0, 1, "float32", seed + 1) as tf.Tensor4D;
  const t = tf.tensor1d([0, 999, 250, 17, 600], "int32");
  const labels = tf.tensor1d([2, 0, 1, 1, 2], "int32");
  return { model, xt, noise, t, labels, dispose: () => tf.dispose([xt, noise, t, labels, ...model.weights.values()]) };
}

Deno.test("shares: contiguous rows, none empty, all of the batch", () => {
  assert.deepEqual(shares(5, 2), [[0, 2], [2, 5]]);
  assert.deepEqual(shares(1, 4), [[0, 1]]);
  assert.deepEqual(shares(12, 3), [[0, 4], [4, 8], [8, 12]]);
});

Deno.test("2 threads: the loss and every gradient of the 1-thread step, with and without labels and loss weights", async () => {
  const { model, xt, noise, t, labels, dispose } = setup();
  const threads = await Threads.start(2, model);
  const before = tf.memory().numTensors;
  try {
    const minSnr = tf.tensor1d([0.5, 1, 2, 0.25, 1]); // per-image loss weights, as min-SNR-γ's
    for (const [y, w] of [[labels, null], [null, null], [labels, minSnr]]) {
      const one = lossGradients(model, xt, t, noise, w, y);
      const two = threads.lossGradients(model, xt, t, noise, w, y);
      const again = threads.lossGradients(model, xt, t, noise, w, y);
      assert.ok(relDiff(one.value, two.value) < 1e-5, `loss ${one.value.dataSync()} vs ${two.value.dataSync()}`);
      const present = (g: Map<string, tf.Tensor>) => [...g].filter(([, v]) => v).map(([k]) => k);
      assert.deepEqual(present(two.grads), present(one.grads)); // (no label_emb gradient without labels)
      assert.equal(present(one.grads).includes("label_emb.weight"), y !== null);
      for (const [name, g] of one.grads) {
        if (!g) continue;
        assert.ok(relDiff(g, two.grads.get(name)!) < 1e-4, `${name}: ${relDiff(g, two.grads.get(name)!)}`);
        assert.deepEqual(again.grads.get(name)!.dataSync(), two.grads.get(name)!.dataSync(), `${name}: repeatable`);
      }
      tf.dispose([one, two, again].flatMap((r) => [r.value, ...[...r.grads.values()].filter((g) => g)]));
    }
    minSnr.dispose();
    assert.equal(tf.memory().numTensors, before);
  } finally {
    threads.close();
    dispose();
  }
});

Deno.test("2 threads: two training steps (AdamW included) track the 1-thread ones", async () => {
  const losses: number[][] = [];
  for (const count of [1, 2]) {
    const { model, xt, noise, labels, dispose } = setup();
    noise.dispose(); // (trainStep draws its own)
    const threads = count > 1 ? await Threads.start(count, model) : null;
    const opt = new AdamW(model, { lr: 1e-3 }), diffusion = new Diffusion({ imageSize: 16, noiseSteps: 1000 });
    setSeed(7); // the same t and ε for both
    const run = [];
    for (let i = 0; i < 3; i++) {
      const loss = tf.tidy(() => trainStep(model, diffusion, opt, xt, labels, threads));
      run.push(loss.dataSync()[0]);
      loss.dispose();
    }
    losses.push(run);
    threads?.close();
    opt.dispose();
    diffusion.dispose();
    dispose();
  }
  losses[0].forEach((l, i) => assert.ok(Math.abs(l - losses[1][i]) < 1e-4 * l, `step ${i + 1}: ${losses}`));
  assert.notEqual(losses[0][0], losses[0][2]); // (the steps did change the weights)
});

Deno.test("2 threads: a step's update shared among the threads is the one AdamW of the summed gradients, bit for bit", async () => {
  const [one, two, here] = [setup(), setup(), setup()]; // three copies of one model
  const threads = await Threads.start(2, one.model);
  const { xt, noise, t, labels } = one;
  const opts = [one, two, here].map(({ model }) => new AdamW(model, { lr: 1e-3, maxGradNorm: 0.5 }));
  try {
    const first = one.model.weights.values().next().value!.dataSync();
    const steps = [[5, true], [5, false], [1, true], [5, true], [5, false]] as const;
    // (1 row: fewer than the threads, one AdamW here; no labels: no label embedding gradient)
    const batch = ([rows, labelled]: readonly [number, boolean]) =>
      [xt, t, noise, null, labelled ? labels : null].map((a) => a?.slice(0, rows) ?? null) as [
        tf.Tensor4D,
        tf.Tensor1D,
        tf.Tensor4D,
        null,
        tf.Tensor1D | null,
      ];
    for (const step of steps) { // two models with their optimizers taking turns on the threads, each its share
      for (const [i, { model }] of [one, two].entries()) {
        const args = batch(step);
        threads.step(model, opts[i], ...args).dispose();
        tf.dispose(args.filter((a) => a) as tf.Tensor[]);
      }
    }
    for (const step of steps) { // the gradients summed here, one AdamW
      const args = batch(step);
      descend(opts[2], threads.lossGradients(here.model, ...args)).dispose();
      tf.dispose(args.filter((a) => a) as tf.Tensor[]);
    }
    opts.forEach((o) => threads.momentsInto(o));
    const floats = (o: AdamW) =>
      [...o.model.weights.values(), ...o.m.values(), ...o.v.values()].map((w) => w.dataSync());
    const [a, b, c] = opts.map(floats), names = [...one.model.weights.keys()];
    const name = (i: number) => names[i % names.length] + ["", " (m)", " (v)"][Math.floor(i / names.length)];
    c.forEach((w, i) => {
      assert.deepEqual(a[i], w, `model 1: ${name(i)}`);
      assert.deepEqual(b[i], w, `model 2: ${name(i)}`);
    });
    assert.notDeepEqual(a[0], first); // (the steps did change the weights)
  } finally {
    threads.close();
    opts.forEach((o) => o.dispose());
    [one, two, here].forEach((m) => m.dispose());
  }
});

Deno.test("2 threads: the forward pass of each of two models (the workers reload the weights)", async () => {
  const a = setup(1), b = setup(2);
  const threads = await Threads.start(2, a.model);
  try {
    const local = [a, b].map(({ model }) => tf.tidy(() => model.forward(a.xt, a.t, a.labels)));
    assert.ok(relDiff(local[0], local[1]) > 0.1); // (two models that differ)
    for (const i of [0, 1, 0]) {
      const two = threads.forward([a, b][i].model, a.xt, a.t, a.labels);
      assert.ok(relDiff(local[i], two) < 1e-5, `forward of model ${i}: ${relDiff(local[i], two)}`);
      two.dispose();
    }
    tf.dispose(local);
  } finally {
    threads.close();
    a.dispose();
    b.dispose();
  }
});
