import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { mulberry32, nextSeed, setBackend, setSeed } from "../kernels/backend.ts";
import { UNetConditional } from "../modules.ts";

Deno.test("auto skips what cannot load here with one line each, and lands on a CPU backend", async () => {
  const lines: string[] = [];
  const chosen = await setBackend("auto", (l) => lines.push(l));
  assert.ok(["tensorflow", "webgpu", "wasm"].includes(chosen));
  assert.equal(tf.getBackend(), chosen);
  for (const l of lines) assert.ok(!l.includes("\n") && /^backend \w+ skipped: /.test(l), l);
  assert.equal(lines.length, ["tensorflow", "webgpu", "wasm"].indexOf(chosen));
});

Deno.test("mulberry32 is deterministic and uniform in [0, 1)", () => {
  const a = mulberry32(42), b = mulberry32(42), c = mulberry32(43);
  const xs = Array.from({ length: 1000 }, a), ys = Array.from({ length: 1000 }, b);
  assert.deepEqual(xs, ys);
  assert.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, c));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
});

Deno.test("the seed stream of tf.random* ops is mulberry32's: setSeed(s) then nextSeed() draws what mulberry32(s) does", () => {
  const rand = mulberry32(1234);
  setSeed(1234);
  for (let i = 0; i < 100; i++) assert.equal(nextSeed(), Math.floor(rand() * 2 ** 32) % 2 ** 31);
});

/** The forward pass and every gradient of a small conditional U-Net on `backend`, as plain arrays. */
async function run(backend: "cpu" | "wasm" | "webgpu") {
  await setBackend(backend);
  setSeed(5);
  const m = new UNetConditional({ width: 8, numClasses: 3 });
  const x = tf.randomNormal([2, 16, 16, 3], 0, 1, "float32", 11) as tf.Tensor4D;
  const t = tf.tensor1d([7, 900], "int32"), y = tf.tensor1d([2, 0], "int32");
  const { value, grads } = tf.variableGrads(() => m.forward(x, t, y).square().mean() as tf.Scalar);
  const out = { loss: (await value.data())[0], grads: [] as Float32Array[] };
  for (const w of m.weights.values()) out.grads.push(await grads[w.name].data() as Float32Array);
  tf.dispose([x, t, y, value, ...Object.values(grads)]);
  m.dispose();
  return out;
}

async function assertMatchesCpu(backend: "wasm" | "webgpu") {
  const ref = await run("cpu");
  const got = await run(backend);
  assert.ok(Math.abs(got.loss - ref.loss) < 1e-4 * Math.abs(ref.loss), `loss ${got.loss} vs ${ref.loss}`);
  ref.grads.forEach((g, i) => {
    let err = 0, norm = 0;
    for (let j = 0; j < g.length; j++) {
      err += (got.grads[i][j] - g[j]) ** 2;
      norm += g[j] ** 2;
    }
    assert.ok(
      Math.sqrt(err) <= 2e-3 * Math.sqrt(norm) + 1e-7,
      `gradient ${i}: relative error ${Math.sqrt(err / norm)}`,
    );
  });
}

Deno.test("wasm: the U-Net's loss and every gradient match the cpu backend", () => assertMatchesCpu("wasm"));

const hasWebgpu = !!(await (navigator as { gpu?: GPU }).gpu?.requestAdapter());
Deno.test({
  name: "webgpu: the U-Net's loss and every gradient match the cpu backend",
  ignore: !hasWebgpu,
  fn: () => assertMatchesCpu("webgpu"),
});
