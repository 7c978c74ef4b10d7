// The native products (kernels/native.ts: a CBLAS sgemm on the wasm heap) against the wasm kernels (XNNPACK) and tfjs's
// pure-JS cpu backend: every kernel they replace, values and gradients, on odd shapes. `deno task test` installs
// Debian's libopenblas0-serial (tests/bring.sh), so here the native path must load.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setSeed } from "../kernels/backend.ts";
import { UNet } from "../modules.ts";
import { registerWasmKernels } from "../kernels/wasm_kernels.ts";
import { loadBlas } from "../kernels/native.ts";
import { rand, withGrads } from "./helpers.ts";

await registerWasmKernels();

/** f's outputs on the native path, the wasm kernels and the cpu backend. */
async function onAll(f: () => tf.Tensor[]) {
  const out: Record<string, Float32Array[]> = {};
  for (const [name, backend, native] of [["native", "wasm", true], ["wasm", "wasm", false], ["cpu", "cpu", false]]) {
    assert.equal(loadBlas(native as boolean).startsWith("native"), native, "the native products must load here");
    await tf.setBackend(backend as string);
    if (backend === "cpu") (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
    const ts = tf.tidy(f);
    out[name as string] = await Promise.all(ts.map(async (t) => Float32Array.from(await t.data())));
    tf.dispose(ts);
  }
  loadBlas(true);
  await tf.setBackend("wasm");
  return out;
}

/** The native outputs equal the other two's within tol, relative to each output's largest |value|. */
async function assertSame(what: string, f: () => tf.Tensor[], tol = 1e-4) {
  const out = await onAll(f);
  for (const other of ["wasm", "cpu"]) {
    out.native.forEach((v, i) => {
      const ref = out[other][i];
      assert.equal(v.length, ref.length, `${what} output ${i}: sizes differ`);
      const scale = Math.max(1e-6, ...ref.map(Math.abs));
      const diff = v.reduce((m, x, j) => Math.max(m, Math.abs(x - ref[j])), 0);
      assert.ok(diff <= tol * scale, `${what} output ${i}, native vs ${other}: max |diff| ${diff} > ${tol} x ${scale}`);
    });
  }
}

Deno.test("native Conv2D and its gradients (input, filter): batch 1, odd channels, 8×8, 1×1, same, valid, explicit", async () => {
  const cases: [
    number[],
    number[],
    "same" | "valid" | [[number, number], [number, number], [number, number], [number, number]],
  ][] = [
    [[1, 8, 8, 3], [3, 3, 3, 5], "same"],
    [[2, 8, 8, 7], [3, 3, 7, 3], "same"],
    [[3, 16, 16, 5], [3, 3, 5, 13], "same"],
    [[2, 8, 8, 6], [1, 1, 6, 3], "same"],
    [[1, 9, 7, 4], [3, 3, 4, 2], "valid"],
    [[2, 8, 8, 3], [3, 2, 3, 4], [[0, 0], [2, 1], [0, 1], [0, 0]]],
  ];
  for (const [xs, ws, pad] of cases) {
    const conv = (x: tf.Tensor, w: tf.Tensor) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, pad);
    await assertSame(`conv2d ${xs} * ${ws} ${JSON.stringify(pad)}`, withGrads(conv, [xs, ws]));
  }
});

Deno.test("native BatchMatMul: batches, broadcasting and transpose flags, with gradients", async () => {
  for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]]) {
    const [m, k, n] = [5, 7, 3];
    for (const [ba, bb] of [[[], []], [[3], [3]], [[1], [3]], [[3], [1]]]) {
      const sa = [...ba, ...(ta ? [k, m] : [m, k])], sb = [...bb, ...(tb ? [n, k] : [k, n])];
      const mm = (a: tf.Tensor, b: tf.Tensor) => tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D, ta, tb);
      const what = `matMul ${sa} x ${sb} (${ta}, ${tb})`;
      if (ba.join() !== bb.join()) await assertSame(what, () => [mm(rand(sa, 1), rand(sb, 2))]); // (tfjs: values only)
      else await assertSame(what, withGrads(mm, [sa, sb]));
    }
  }
});

Deno.test("native path: a U-Net's loss and every gradient (conditional, attention) equal the wasm and cpu ones", async () => {
  setSeed(3);
  const model = new UNet({ width: 4, numClasses: 3 });
  const [x, t, y] = [rand([1, 8, 8, 3], 5), tf.tensor1d([7], "int32"), tf.tensor1d([2], "int32")];
  const weights = [...model.weights.values()];
  await assertSame("U-Net, batch 1, width 4, 8 px", () => {
    const { value, grads } = tf.variableGrads(() => model.forward(x as tf.Tensor4D, t, y).square().mean(), weights);
    return [value, ...weights.map((w) => grads[w.name])];
  }, 2e-3);
  model.dispose();
  tf.dispose([x, t, y]);
});
