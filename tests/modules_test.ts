import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { setBackend, setSeed } from "../kernels/backend.ts";
import { UNet, UNetConditional } from "../modules.ts";

await setBackend("wasm");

Deno.test("parameter counts equal the PyTorch tutorial's at width 64", () => {
  const u = new UNet();
  const c = new UNetConditional({ numClasses: 10 });
  assert.equal(u.parameterCount, 23_332_739);
  assert.equal(c.parameterCount, 23_335_299);
  u.dispose();
  c.dispose();
});

Deno.test("U-Net output shape equals input shape at 16, 32 and 64 px", () => {
  setSeed(0);
  const m = new UNetConditional({ width: 8, numClasses: 3 });
  for (const size of [16, 32, 64]) {
    const out = tf.tidy(() =>
      m.forward(tf.randomNormal([2, size, size, 3]), tf.tensor1d([0, 999], "int32"), tf.tensor1d([1, 2], "int32"))
    );
    assert.deepEqual(out.shape, [2, size, size, 3]);
    out.dispose();
  }
  assert.throws(() => m.forward(tf.zeros([1, 20, 20, 3]), tf.tensor1d([0], "int32")), /not divisible by 8/);
  m.dispose();
});

Deno.test("every weight of the conditional U-Net receives a non-zero gradient", async () => {
  setSeed(1);
  const m = new UNetConditional({ width: 8, numClasses: 3 });
  const x = tf.randomNormal([2, 16, 16, 3]) as tf.Tensor4D;
  const t = tf.tensor1d([10, 500], "int32"), y = tf.tensor1d([0, 2], "int32");
  const { value, grads } = tf.variableGrads(() => m.forward(x, t, y).square().mean() as tf.Scalar);
  assert.equal(Object.keys(grads).length, m.weights.size);
  for (const [name, w] of m.weights) {
    const g = grads[w.name];
    assert.ok((await g.abs().max().data())[0] > 0, `zero gradient for ${name}`);
  }
  tf.dispose([x, t, y, value, ...Object.values(grads)]);
  m.dispose();
});

Deno.test("the label changes the conditional prediction; labels = null is the unconditional path", async () => {
  setSeed(2);
  const m = new UNetConditional({ width: 8, numClasses: 3 });
  const x = tf.randomNormal([1, 16, 16, 3]) as tf.Tensor4D, t = tf.tensor1d([3], "int32");
  const [a, b, u] = [tf.tensor1d([0], "int32"), tf.tensor1d([1], "int32"), null].map((y) => m.forward(x, t, y));
  const diff = async (p: tf.Tensor, q: tf.Tensor) => (await p.sub(q).abs().max().data())[0];
  assert.ok(await diff(a, b) > 1e-4);
  assert.ok(await diff(a, u) > 1e-4);
  tf.dispose([x, t, a, b, u]);
  m.dispose();
});

Deno.test("init as PyTorch's: Linear and Conv2d U(±1/√fan_in); MultiheadAttention Xavier-uniform, zero biases", async () => {
  setSeed(0);
  const model = new UNet({ width: 16 });
  const range = async (name: string) => {
    const w = model.weights.get(name)!;
    const [min, max] = await Promise.all([w.min().data(), w.max().data()]);
    return [min[0], max[0]];
  };
  const near = ([min, max]: number[], bound: number) => min >= -bound && max <= bound && max > 0.95 * bound;
  const c = 32; // sa1 runs at 2 × width
  assert.ok(near(await range("sa1.mha.in_proj_weight"), Math.sqrt(6 / (c + 3 * c))), "Xavier-uniform in_proj_weight");
  assert.deepEqual(await range("sa1.mha.in_proj_bias"), [0, 0]);
  assert.deepEqual(await range("sa1.mha.out_proj.bias"), [0, 0]);
  assert.ok(near(await range("sa1.mha.out_proj.weight"), 1 / Math.sqrt(c)), "out_proj.weight: nn.Linear's");
  assert.ok(near(await range("sa1.ff_self.1.weight"), 1 / Math.sqrt(c)), "ff_self.1: nn.Linear's");
  assert.ok(near(await range("inc.double_conv.0.weight"), 1 / Math.sqrt(9 * 3)), "Conv2d's");
  model.dispose();
});
