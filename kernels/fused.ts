// The fused operations. Where the backend has registered them (fused_webgpu.ts: WGSL; fused_wasm.ts: loops over the
// wasm heap) each is one kernel or a few; where it has not (cpu, tensorflow) the callers in modules.ts, adamw.ts and
// ema.ts run their plain formula instead. tests/fused_test.ts checks every fused kernel against the plain formula on
// the cpu backend.
import * as tf from "@tensorflow/tfjs";

/** The kernel names, as registered by fused_webgpu.ts and fused_wasm.ts. */
export const FUSED = {
  // stats: what a kernel's gradient needs beside its inputs, in its backend's own layout
  norm: "DdpmNorm", // [y, stats] = norm(x, g, b[, r]): (x - mean)/√(var + 1e-5)·g + b (+ r), then GELU if asked
  normGrad: "DdpmNormGrad", // [dx, dg, db(, dr)]
  gelu: "DdpmGelu",
  geluGrad: "DdpmGeluGrad",
  attention: "DdpmAttention", // [o, stats] = softmax(q·kᵀ/√d)·v per head, from qkv [b, n, 3c]
  attentionGrad: "DdpmAttentionGrad", // dqkv
  adamw: "DdpmAdamW", // updates the weights and their moments in place
  clippedAdamw: "DdpmClippedAdamW", // the same on gradients clipped to a global norm first (wasm only)
  ema: "DdpmEma", // e ← β·e + (1-β)·w in place
} as const;

type KernelFunc = (args: never) => tf.TensorInfo | tf.TensorInfo[];
/** The operations a backend may lack (their callers take the plain formula or another kernel there). */
type Optional = "clippedAdamw";
/** A backend's kernels for the fused operations, by operation. */
export type FusedKernels =
  & Record<Exclude<keyof typeof FUSED, Optional>, KernelFunc>
  & Partial<Record<Optional, KernelFunc>>;

/** The kernel configs of a backend's fused kernels, for tf.registerKernel. */
export const fusedKernelConfigs = (backendName: string, kernels: FusedKernels, wrap = (f: tf.KernelFunc) => f) =>
  Object.entries(kernels).filter(([, f]) => f).map(([op, f]) => ({
    kernelName: FUSED[op as keyof typeof FUSED],
    backendName,
    kernelFunc: wrap(f as unknown as tf.KernelFunc),
  }));

/** Whether the current backend has the fused kernel `op`. */
export const hasFused = (op: keyof typeof FUSED) => tf.getKernel(FUSED[op], tf.getBackend()) !== undefined;

const run = (name: string, inputs: tf.NamedTensorMap, attrs: object = {}) =>
  tf.engine().runKernel(name, inputs, attrs as tf.NamedAttrMap) as tf.Tensor | tf.Tensor[];

type Grad = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
/**
 * tf.customGrad of a kernel: `forward` returns the output and what the gradient kernel needs beside the inputs;
 * `grad` gets the inputs and those (saved: tfjs frees what is not saved before the backward pass runs).
 */
function withGrad(inputs: tf.Tensor[], forward: () => [tf.Tensor, tf.Tensor[]], grad: Grad): tf.Tensor {
  const f = tf.customGrad((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const [value, extra] = forward();
    save([...inputs, ...extra]);
    return { value, gradFunc: grad };
  });
  return f(...inputs);
}

export interface NormOptions {
  rowSize: number; // values per normalized row: h·w·c for GroupNorm(1, c), c for LayerNorm(c)
  residual?: tf.Tensor | null; // added after the affine
  gelu?: boolean; // GELU of the result
}

/** The norm kernel: normalization over rows of `rowSize` values, affine, residual, GELU, in one pass. */
export function fusedNorm(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, { rowSize, residual, gelu }: NormOptions) {
  const attrs = { rowSize, gelu: !!gelu };
  return withGrad(
    [x, g, b, ...(residual ? [residual] : [])],
    () => {
      const [y, stats] = run(FUSED.norm, { x, g, b, ...(residual ? { r: residual } : {}) }, attrs) as tf.Tensor[];
      return [y, [stats]];
    },
    (dy, saved) => {
      const [x, g, b] = saved, [r, stats] = residual ? saved.slice(3) : [null, saved[3]];
      return run(FUSED.normGrad, { dy, x, g, b, stats, ...(r ? { r } : {}) }, attrs);
    },
  );
}

/** The GELU kernel. */
export const fusedGelu = <X extends tf.Tensor>(x: X): X =>
  withGrad([x], () => [run(FUSED.gelu, { x }) as tf.Tensor, []], (dy, [x]) => run(FUSED.geluGrad, { dy, x })) as X;

/** The attention kernel: qkv [b, n, 3c] (q, k, v side by side, heads of c/heads columns) → [b, n, c]. */
export function fusedAttention(qkv: tf.Tensor3D, heads: number): tf.Tensor3D {
  return withGrad(
    [qkv],
    () => {
      const [o, stats] = run(FUSED.attention, { qkv }, { heads }) as tf.Tensor[];
      return [o, [o, stats]];
    },
    (dy, [qkv, o, stats]) => run(FUSED.attentionGrad, { dy, qkv, o, stats }, { heads }),
  ) as tf.Tensor3D;
}

/** One AdamW update's settings, as the AdamW kernels take them (AdamW.nextStep). */
export interface AdamWStep {
  /** The learning rate of this step. */
  lr: number;
  /** β_1, the decay of the first moment. */
  beta1: number;
  /** β_2, the decay of the second moment. */
  beta2: number;
  /** ε, added to √v̂. */
  eps: number;
  /** The decoupled weight decay λ. */
  weightDecay: number;
  /** The bias correction of m, 1 - β_1^t. */
  c1: number;
  /** The bias correction of v, 1 - β_2^t. */
  c2: number;
  /** > 0: the gradients scaled by min(1, maxGradNorm/‖g‖) first (the clippedAdamw kernel). */
  maxGradNorm?: number;
  /** Or by this clip scale, found over more weights than these (run/threads.ts; the clippedAdamw kernel). */
  scale?: number;
}

/** A weight, its moments and its gradient. */
export type AdamWParam = { w: tf.Variable; m: tf.Variable; v: tf.Variable; g: tf.Tensor };

/**
 * The AdamW kernel over many weights at once (clippedAdamw when s.maxGradNorm is set). On wasm it returns new weight
 * tensors (XNNPACK keeps packed copies of matMul and conv weights keyed by tensor, so a weight must not change in
 * place there); they are assigned here.
 */
export function fusedAdamW(params: AdamWParam[], s: AdamWStep) {
  const inputs: tf.NamedTensorMap = {};
  params.forEach(({ w, m, v, g }, i) =>
    Object.assign(inputs, { [`w${i}`]: w, [`m${i}`]: m, [`v${i}`]: v, [`g${i}`]: g })
  );
  const kernel = s.maxGradNorm || s.scale !== undefined ? FUSED.clippedAdamw : FUSED.adamw;
  assignAll(params.map((p) => p.w), run(kernel, inputs, s) as tf.Tensor[]);
}

/** The EMA kernel over many weights at once (new tensors on wasm, as for AdamW). */
export function fusedEma(pairs: { e: tf.Variable; w: tf.Tensor }[], beta: number) {
  const inputs: tf.NamedTensorMap = {};
  pairs.forEach(({ e, w }, i) => Object.assign(inputs, { [`e${i}`]: e, [`w${i}`]: w }));
  assignAll(pairs.map((p) => p.e), run(FUSED.ema, inputs, { beta }) as tf.Tensor[]);
}

function assignAll(variables: tf.Variable[], values: tf.Tensor[]) {
  values.forEach((t, i) => variables[i].assign(t));
  tf.dispose(values);
}
