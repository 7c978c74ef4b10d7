// The fused kernels (fused_wasm.ts, fused_webgpu.ts on whatever adapter Deno has, llvmpipe here) against the plain
// formulas of modules.ts, adamw.ts and ema.ts on the cpu backend: values and gradients.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setBackend } from "../kernels/backend.ts";
import { EMA } from "../ema.ts";
import { attentionLimits } from "../kernels/fused_wasm.ts";
import { attention, gelu, Module, Norm, normGelu } from "../modules.ts";
import { AdamW, clipByGlobalNorm } from "../run/adamw.ts";

const hasWebgpu = !!(await (navigator as { gpu?: GPU }).gpu?.requestAdapter());
const BACKENDS = ["wasm", ...(hasWebgpu ? ["webgpu"] : [])] as const;

/** Deterministic values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 31) - 1);
}
const rand = (shape: number[], seed: number) => tf.tensor(values(shape.reduce((a, b) => a * b, 1), seed), shape);

/** f's outputs on `backend` (the fused kernels) and on cpu (the plain formulas), as arrays. */
async function both(backend: string, f: () => tf.Tensor[]): Promise<[Float32Array[], Float32Array[]]> {
  const out: Float32Array[][] = [];
  for (const b of [backend, "cpu"]) {
    await setBackend(b as "cpu");
    const ts = tf.tidy(f);
    out.push(await Promise.all(ts.map(async (t) => Float32Array.from(await t.data()))));
    tf.dispose(ts);
  }
  return out as [Float32Array[], Float32Array[]];
}

/** Each output within `tol` of the plain formula's, relative to the output's largest |value|. */
async function assertClose(what: string, backend: string, f: () => tf.Tensor[], tol = 1e-4) {
  const [got, want] = await both(backend, f);
  want.forEach((w, i) => {
    assert.equal(got[i].length, w.length, `${what} output ${i}: sizes differ`);
    const scale = w.reduce((m, v) => Math.max(m, Math.abs(v)), 1e-6);
    const diff = w.reduce((m, v, j) => Math.max(m, Math.abs(v - got[i][j])), 0);
    assert.ok(diff <= tol * scale, `${what} on ${backend}, output ${i}: max |diff| ${diff} > ${tol} x ${scale}`);
  });
}

/** y = f(...xs) and the gradients of Σ y·r with respect to every x. */
const withGrads = (f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], seed = 99) => {
  const y = f(...xs), r = rand(y.shape, seed);
  return [y, ...tf.grads((...ys: tf.Tensor[]) => f(...ys).mul(r).sum())(xs)];
};

for (const backend of BACKENDS) {
  Deno.test(`${backend}: norm (GroupNorm(1), LayerNorm; + residual, GELU) values and gradients`, async () => {
    const cases: [number[], number[]][] = [
      [[2, 4, 6, 5], [1, 2, 3]], // GroupNorm(1): rows of h·w·c
      [[2, 16, 16, 20], [1, 2, 3]], // rows of 5,120 values: several chunks on webgpu
      [[2, 3, 3, 80], [1, 2, 3]], // 80 channels: two groups of 64 for the channel sums
      [[3, 7, 6], [-1]], // LayerNorm: rows of c
    ];
    for (const [shape, axes] of cases) {
      for (const [residual, withGelu] of [[false, false], [false, true], [true, true]]) {
        const c = shape.at(-1)!;
        await assertClose(`norm ${shape} residual ${residual} gelu ${withGelu}`, backend, () => {
          const norm = new Norm(c, axes);
          norm.g.assign(rand([c], 11).add(1));
          norm.b.assign(rand([c], 12));
          const xs = [rand(shape, 13).mul(3).add(0.5), norm.g, norm.b, ...(residual ? [rand(shape, 14)] : [])];
          const out = withGrads((x, _g, _b, r) => withGelu ? normGelu(norm, x, r ?? null) : norm.forward(x), xs);
          norm.dispose();
          return out;
        });
      }
    }
  });

  Deno.test(`${backend}: GELU values and gradient`, async () => {
    await assertClose("gelu", backend, () => withGrads(gelu, [rand([3, 333], 5).mul(4)]), 1e-5);
  });

  Deno.test(`${backend}: attention (heads folded into qkv) values and gradients`, async () => {
    const saved = attentionLimits.blockFloats;
    attentionLimits.blockFloats = 70 * 30; // wasm: 30 query rows a block, the last one short
    try {
      for (const [b, n, c, heads] of [[2, 70, 8, 2], [1, 9, 64, 4], [2, 130, 32, 2]]) {
        await assertClose(
          `attention b ${b} n ${n} c ${c} heads ${heads}`,
          backend,
          () => withGrads((qkv) => attention(qkv as tf.Tensor3D, heads), [rand([b, n, 3 * c], 7).mul(2)]),
        );
      }
    } finally {
      attentionLimits.blockFloats = saved;
    }
  });

  Deno.test(`${backend}: AdamW and EMA over many weights equal the plain formulas; read-backs see the updates`, async () => {
    const shapes = [[3, 3, 4, 5], [300], [7], [2, 70], [1], [513], [4, 4], [9, 9]];
    class Weights extends Module {
      constructor(seed: number) {
        super();
        shapes.forEach((s, i) => this.param(`w${i}`, rand(s, seed + i)));
      }
    }
    const run = async (b: string) => {
      await setBackend(b as "cpu");
      const [model, average, clippedModel] = [new Weights(1), new Weights(50), new Weights(1)];
      const opt = new AdamW(model, { lr: 0.01 }), ema = new EMA(0.9);
      const clipped = new AdamW(clippedModel, { lr: 0.01, maxGradNorm: 3 }); // ‖g‖ ≈ 20: clipped
      const before = Float32Array.from(await model.weights.get("w0")!.data()); // a read-back before the update
      for (let step = 0; step < 3; step++) {
        const grads = new Map([...model.weights.keys()].map((k, i) => [k, rand(shapes[i], 100 * step + i)]));
        opt.update(grads);
        clipped.update(grads);
        ema.stepEma(average, model, 1);
        tf.dispose([...grads.values()]);
      }
      const tensors = [model, average, clippedModel].flatMap((m) => [...m.weights.values()]);
      tensors.push(...opt.m.values(), ...clipped.m.values()); // (the clip's scale shows in m, hardly in the weights)
      const after = await Promise.all(tensors.map(async (w) => Float32Array.from(await w.data())));
      [model, average, clippedModel, opt, clipped].forEach((d) => d.dispose());
      return { before, after };
    };
    const got = await run(backend), want = await run("cpu");
    assert.notDeepEqual(got.after[0], got.before, "the weights changed after a read-back");
    want.after.forEach((w, i) => {
      const diff = w.reduce((m, v, j) => Math.max(m, Math.abs(v - got.after[i][j])), 0);
      assert.ok(diff < 1e-5, `tensor ${i}: max |diff| ${diff}`);
    });
  });
}

Deno.test("wasm: AdamW clipping inside its kernel gives the very floats of clipByGlobalNorm, then AdamW", async () => {
  await setBackend("wasm");
  class Weights extends Module {
    constructor() {
      super();
      [[3, 3, 4, 5], [300], [7], [2, 70], [1], [513]].forEach((s, i) => this.param(`w${i}`, rand(s, 1 + i)));
    }
  }
  const [inKernel, plain] = [new Weights(), new Weights()];
  const maxGradNorm = 2;
  const [fused, unclipped] = [new AdamW(inKernel, { lr: 0.01, maxGradNorm }), new AdamW(plain, { lr: 0.01 })];
  const before = tf.memory().numTensors;
  for (const size of [1, 0.01, 3]) { // ‖g‖ ≈ 19, 0.19 (not clipped), 57
    const grads = new Map(
      [...plain.weights].map(([k, w], i) => [k, tf.tidy(() => rand(w.shape, 7 * size + i).mul(size))]),
    );
    fused.update(grads);
    const clipped = clipByGlobalNorm(grads, maxGradNorm);
    unclipped.update(clipped);
    tf.dispose([...grads.values(), ...clipped.values()]);
  }
  assert.equal(tf.memory().numTensors, before);
  const floats = (o: AdamW) =>
    Promise.all([...o.model.weights.values(), ...o.m.values(), ...o.v.values()].map((t) => t.data()));
  assert.deepEqual(await floats(fused), await floats(unclipped));
  [inKernel, plain, fused, unclipped].forEach((d) => d.dispose());
});

Deno.test({
  name: "webgpu: the filter gradient of a convolution (tiled, split over pixels) equals the cpu backend's",
  ignore: !hasWebgpu,
  fn: async () => {
    const cases: [number[], number[], "same" | "valid"][] = [
      [[2, 6, 5, 3], [3, 3, 3, 4], "same"],
      [[2, 6, 5, 3], [3, 3, 3, 4], "valid"],
      [[2, 5, 6, 2], [2, 2, 2, 3], "same"], // even kernel: asymmetric padding
      [[3, 40, 40, 5], [3, 3, 5, 70], "same"], // 4,800 pixels in several splits; 70 channels: tiles at the edge
    ];
    for (const [xs, ws, pad] of cases) {
      await assertClose(`conv2d ${xs} ${ws} ${pad}`, "webgpu", () => {
        const [x, w] = [rand(xs, 1), rand(ws, 2)];
        return withGrads((x, w) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, pad), [x, w]);
      });
    }
  },
});
