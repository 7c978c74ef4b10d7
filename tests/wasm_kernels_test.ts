// The wasm kernels of wasm_kernels.ts (XNNPACK's products; tests/native_test.ts has the sgemm ones) against tfjs's
// pure-JS cpu backend: forward values and gradients.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setSeed } from "../kernels/backend.ts";
import { UNet } from "../modules.ts";
import { limits, registerWasmKernels } from "../kernels/wasm_kernels.ts";
import { loadBlas } from "../kernels/native.ts";
import { rand, withGrads } from "./helpers.ts";

await registerWasmKernels();
loadBlas(false);

/** Runs f on the cpu and the wasm backend; returns the outputs of both as arrays. */
async function onBoth(f: () => tf.Tensor[]): Promise<Record<"cpu" | "wasm", Float32Array[]>> {
  const out = {} as Record<"cpu" | "wasm", Float32Array[]>;
  for (const b of ["cpu", "wasm"] as const) {
    await tf.setBackend(b);
    if (b === "cpu") (tf.backend() as unknown as { firstUse: boolean }).firstUse = false; // no tfjs-node banner
    const ts = tf.tidy(f);
    out[b] = await Promise.all(ts.map(async (t) => Float32Array.from(await t.data())));
    tf.dispose(ts);
  }
  return out;
}

/** Max |wasm - cpu| over each output, relative to the output's largest |value|. */
async function assertSame(what: string, f: () => tf.Tensor[], tol = 1e-4) {
  const { cpu, wasm } = await onBoth(f);
  assert.equal(cpu.length, wasm.length);
  cpu.forEach((c, i) => {
    assert.equal(c.length, wasm[i].length, `${what} output ${i}: sizes differ`);
    const scale = Math.max(1e-6, ...c.map(Math.abs));
    const diff = c.reduce((m, v, j) => Math.max(m, Math.abs(v - wasm[i][j])), 0);
    assert.ok(diff <= tol * scale, `${what} output ${i}: max |diff| ${diff} > ${tol} x ${scale}`);
  });
}

Deno.test("BatchMatMul: batches, broadcasting, transpose flags, and gradients", async () => {
  for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]]) {
    const [m, k, n] = [5, 7, 6];
    const sa = (b: number[]) => [...b, ...(ta ? [k, m] : [m, k])];
    const sb = (b: number[]) => [...b, ...(tb ? [n, k] : [k, n])];
    for (const [ba, bb] of [[[], []], [[3], [3]], [[1], [3]], [[3], [1]], [[2, 3], [2, 3]]]) {
      const mm = (a: tf.Tensor, b: tf.Tensor) => tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D, ta, tb);
      const what = `matMul ${sa(ba)} x ${sb(bb)} (${ta}, ${tb})`;
      // tfjs's own matMul gradient does not reduce over broadcast batches: values only there.
      const broadcast = ba.join() !== bb.join();
      await assertSame(
        what,
        broadcast ? () => [mm(rand(sa(ba), 1), rand(sb(bb), 2))] : withGrads(mm, [sa(ba), sb(bb)]),
      );
    }
  }
});

Deno.test("BatchMatMul computed as (op(b)ᵀ·op(a)ᵀ)ᵀ: a big transposed left operand, a thin right one", async () => {
  for (const batch of [[], [3]]) {
    const mm = (a: tf.Tensor, b: tf.Tensor) => tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D, true, false);
    await assertSame(`matMul ${batch} (true, false)`, withGrads(mm, [[...batch, 40, 30], [...batch, 40, 3]]));
  }
});

Deno.test("Identity (clone) shares the data and keeps it when the original is disposed", async () => {
  await tf.setBackend("wasm");
  const x = rand([5, 7], 4);
  const want = Float32Array.from(await x.data());
  const y = x.clone();
  x.dispose();
  const z = tf.tidy(() => y.add(0).sub(y)); // more work on the heap after the original is gone
  assert.deepEqual(Float32Array.from(await y.data()), want);
  assert.equal((await z.abs().max().data())[0], 0);
  tf.dispose([y, z]);
});

Deno.test("Conv2D gradients (Conv2DBackpropInput, Conv2DBackpropFilter)", async () => {
  const cases: [number[], number[], "same" | "valid"][] = [
    [[2, 6, 5, 3], [3, 3, 3, 4], "same"],
    [[2, 6, 5, 3], [3, 3, 3, 4], "valid"],
    [[1, 4, 4, 5], [1, 1, 5, 2], "same"],
    [[2, 5, 6, 2], [2, 2, 2, 3], "same"], // even kernel: asymmetric padding
  ];
  for (const [xs, ws, pad] of cases) {
    const conv = (x: tf.Tensor, w: tf.Tensor) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, pad);
    await assertSame(`conv2d ${xs} ${ws} ${pad}`, withGrads(conv, [xs, ws]));
  }
  const saved = limits.colsFloats;
  limits.colsFloats = 3 * 3 * 3 * 6 * 5; // one image's im2col matrix: the filter gradient in parts
  try {
    const conv = (x: tf.Tensor, w: tf.Tensor) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, "same");
    await assertSame("conv2d filter gradient in parts", withGrads(conv, [[3, 6, 5, 3], [3, 3, 3, 4]]));
  } finally {
    limits.colsFloats = saved;
  }
});

Deno.test("Slice: ranks 1-5, partial and full axes, float32 and int32", async () => {
  const cases: [number[], number[], number[]][] = [
    [[7], [2], [4]],
    [[4, 6], [1, 0], [2, 6]],
    [[4, 6], [0, 2], [4, 3]],
    [[3, 4, 5], [1, 1, 1], [2, 2, 3]],
    [[2, 3, 4, 5], [1, 0, 2, 0], [1, 3, 2, 5]],
    [[2, 6, 3, 4, 2], [0, 1, 1, 0, 0], [2, 4, 1, 4, 2]], // the attention's q/k/v split
    [[2, 6, 3, 4, 2], [1, 0, 0, 1, 1], [1, 6, 3, 2, 1]],
  ];
  for (const [shape, begin, size] of cases) {
    await assertSame(`slice ${shape} ${begin} ${size}`, withGrads((x) => x.slice(begin, size), [shape]));
    await assertSame(`slice int32 ${shape}`, () => [rand(shape, 5).mul(100).toInt().slice(begin, size).toFloat()]);
  }
});

Deno.test("MaxPoolGrad: the gradient goes to the first maximum, all-negative windows included", async () => {
  const pool = (x: tf.Tensor) => tf.maxPool(x as tf.Tensor4D, 2, 2, "valid");
  await assertSame("maxPool 2x2", withGrads(pool, [[2, 6, 4, 3]]));
  await assertSame("maxPool of negatives", () => {
    const x = rand([1, 4, 4, 2], 3).abs().neg().sub(0.1); // every window all negative
    return [tf.grad((x) => pool(x).mul(rand([1, 2, 2, 2], 4)).sum())(x)];
  });
});

Deno.test("U-Net (width 8, 16 px): loss and every weight's gradient, wasm against cpu", async () => {
  await tf.setBackend("cpu");
  setSeed(3);
  const model = new UNet({ width: 8 });
  const x = rand([2, 16, 16, 3], 7), noise = rand([2, 16, 16, 3], 8), t = tf.tensor1d([10, 700], "int32");
  const weights = [...model.weights.values()];
  try {
    await assertSame("U-Net gradients", () => {
      const { value, grads } = tf.variableGrads(
        () => tf.losses.meanSquaredError(noise, model.forward(x as tf.Tensor4D, t)) as tf.Scalar,
        weights,
      );
      return [value, ...weights.map((w) => grads[w.name])];
    }, 2e-4);
  } finally {
    model.dispose();
    tf.dispose([x, noise, t]);
  }
});
