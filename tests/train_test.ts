import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setBackend, setSeed } from "../kernels/backend.ts";
import { Diffusion } from "../diffusion.ts";
import { UNet } from "../modules.ts";
import { AdamW } from "../run/adamw.ts";
import { trainStep } from "../train.ts";

await setBackend("wasm");

Deno.test("overfit: a tiny model on a fixed batch halves its loss quickly", async () => {
  setSeed(0);
  const model = new UNet({ width: 8 });
  const opt = new AdamW(model, { lr: 2e-3 });
  const diffusion = new Diffusion({ imgSize: 16 });
  const x0 = tf.randomUniform([4, 16, 16, 3], -1, 1, "float32", 1) as tf.Tensor4D;
  const t = tf.tensor1d([100, 300, 600, 900], "int32");
  const [xt, eps] = diffusion.noiseImages(x0, t);
  const losses: number[] = [];
  for (let i = 0; i < 60; i++) {
    const { value, grads } = tf.variableGrads(() => tf.losses.meanSquaredError(eps, model.forward(xt, t)) as tf.Scalar);
    opt.update(new Map([...model.weights].map(([n, w]) => [n, grads[w.name]])));
    losses.push((await value.data())[0]);
    tf.dispose([value, ...Object.values(grads)]);
  }
  assert.ok(losses.at(-1)! < losses[0] / 2, `loss ${losses[0]} -> ${losses.at(-1)}`);
  tf.dispose([x0, t, xt, eps]);
  model.dispose();
  opt.dispose();
  diffusion.dispose();
});

Deno.test("no tensor leak: tf.memory().numTensors after step 10 equals after step 2", async () => {
  setSeed(0);
  const model = new UNet({ width: 8, numClasses: 2 });
  const opt = new AdamW(model);
  const diffusion = new Diffusion({ imgSize: 16 });
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
  const diffusion = new Diffusion({ imgSize: 16, noiseSteps: 8 });
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
