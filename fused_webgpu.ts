// Support file (not needed to follow the paper): the kernels of fused.ts for tfjs's WebGPU backend, in WGSL.
// Each dispatch is recorded into the backend's own command encoder, as its kernels are, but with as many outputs
// as a kernel needs (tfjs's programs have one). Numbers reach the shaders as uniforms, never as scalar tensors.
import * as tf from "@tensorflow/tfjs";
import { FUSED } from "./fused.ts";

type Info = tf.TensorInfo;
interface Backend { // the parts of tfjs's WebGPUBackend used here
  device: GPUDevice;
  tensorMap: { get(dataId: object): { resource: GPUBuffer | null; values: unknown; refCount: number } };
  uploadToGPU(dataId: object): void;
  makeTensorInfo(shape: number[], dtype: tf.DataType): Info;
  makeUniforms(u: { type: string; data: number[] }[]): GPUBufferBinding;
  disposeData(dataId: object): void;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  commandEncoder: GPUCommandEncoder;
  computePassEncoder: GPUComputePassEncoder | null;
  commandQueueOwnedIds: WeakSet<object>;
  dispatchCountInPass: number;
}
type Uniform = ["f32" | "u32", number];
const TYPES = { f32: "float32", u32: "uint32" };
const size = (t: Info) => t.shape.reduce((a, b) => a * b, 1);

const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/**
 * Records one dispatch of the shader `key` (made by `code()` the first time): binding 0 holds the uniforms, then
 * come the outputs (read_write; new or updated in place) and the inputs.
 */
function dispatch(
  be: Backend,
  key: string,
  code: () => string,
  groups: number[],
  outputs: Info[],
  inputs: Info[],
  uniforms: Uniform[],
) {
  const cache = pipelines.get(be.device) ?? new Map<string, GPUComputePipeline>();
  pipelines.set(be.device, cache);
  let pipeline = cache.get(key);
  if (!pipeline) {
    if (!cache.size) { // a shader that does not compile would otherwise leave its outputs unwritten, silently
      be.device.addEventListener("uncapturederror", (e) => console.error((e as GPUUncapturedErrorEvent).error.message));
    }
    const module = be.device.createShaderModule({ code: code(), label: key });
    pipeline = be.device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" }, label: key });
    cache.set(key, pipeline);
  }
  const tensors = [...outputs, ...inputs];
  for (const t of tensors) {
    be.uploadToGPU(t.dataId);
    be.commandQueueOwnedIds.add(t.dataId); // not released before the queue is submitted
  }
  for (const t of outputs) be.tensorMap.get(t.dataId).values = null; // drop a copy read back before this write
  const entries: GPUBindGroupEntry[] = [
    { binding: 0, resource: be.makeUniforms(uniforms.map(([type, v]) => ({ type: TYPES[type], data: [v] }))) },
    ...tensors.map((t, i) => ({ binding: i + 1, resource: { buffer: be.tensorMap.get(t.dataId).resource! } })),
  ];
  const bindGroup = be.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  be.ensureCommandEncoderReady();
  be.computePassEncoder ??= be.commandEncoder.beginComputePass();
  be.computePassEncoder.setPipeline(pipeline);
  be.computePassEncoder.setBindGroup(0, bindGroup);
  be.computePassEncoder.dispatchWorkgroups(groups[0], groups[1] ?? 1, groups[2] ?? 1);
  if (++be.dispatchCountInPass >= tf.env().getNumber("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE")) {
    be.endComputePassEncoder();
    be.submitQueue();
  }
}

/** Workgroups for `n` items, `per` to a workgroup: [x, y] with x within the per-dimension limit. */
const grid = (n: number, per = 256) => {
  const groups = Math.ceil(n / per), x = Math.min(groups, 32768);
  return [x, Math.ceil(groups / x)];
};

const out = (be: Backend, shape: number[]) => be.makeTensorInfo(shape, "float32");
/** WGSL declarations: the uniforms struct, then read_write outputs and read-only inputs from binding 1 on. */
function bindings(uniforms: string, outputs: string[], inputs: string[]) {
  const decl = (name: string, i: number, access: string) =>
    `@group(0) @binding(${i + 1}) var<storage, ${access}> ${name}: array<f32>;`;
  return `struct U { ${uniforms} }
@group(0) @binding(0) var<uniform> u: U;
${outputs.map((n, i) => decl(n, i, "read_write")).join("\n")}
${inputs.map((n, i) => decl(n, outputs.length + i, "read")).join("\n")}`;
}

const MAIN = `@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * 256u + lid;`;

/** Exact GELU and its derivative; erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), as tfjs's Erf. */
const GELU = `
fn erf(x: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.3275911 * abs(x));
  let y = 1.0 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t *
    exp(-x * x);
  return select(-y, y, x >= 0.0);
}
fn gelu(x: f32) -> f32 { return 0.5 * x * (1.0 + erf(x * 0.70710678118654752)); }
fn geluGrad(x: f32) -> f32 {
  return 0.5 * (1.0 + erf(x * 0.70710678118654752)) + x * 0.39894228040143268 * exp(-0.5 * x * x);
}`;

// ------------------------------------------------------------------ GELU

function gelu({ inputs: { x }, backend }: { inputs: { x: Info }; backend: unknown }) {
  const be = backend as Backend, y = out(be, x.shape);
  const code = () =>
    `${bindings("size: u32", ["y"], ["x"])}${GELU}
${MAIN} if (i < u.size) { y[i] = gelu(x[i]); } }`;
  dispatch(be, "gelu", code, grid(size(x)), [y], [x], [["u32", size(x)]]);
  return y;
}

function geluGrad({ inputs: { dy, x }, backend }: { inputs: { dy: Info; x: Info }; backend: unknown }) {
  const be = backend as Backend, dx = out(be, x.shape);
  const code = () =>
    `${bindings("size: u32", ["dx"], ["dy", "x"])}${GELU}
${MAIN} if (i < u.size) { dx[i] = dy[i] * geluGrad(x[i]); } }`;
  dispatch(be, "geluGrad", code, grid(size(x)), [dx], [dy, x], [["u32", size(x)]]);
  return dx;
}

// ------------------------------------------------------------------ Norm (+ residual + GELU)
// Rows of n values are cut into `chunks` of `len`; one workgroup of 64 reduces a chunk to (count, mean, M2),
// which later kernels merge per row (Chan et al.'s parallel variance). stats: [rows, chunks, 5] holds those
// three, and the backward pass's two row sums in the last two.

interface NormAttrs {
  rowSize: number;
  gelu: boolean;
}
const chunking = (n: number) => {
  const chunks = Math.min(32, Math.ceil(n / 4096));
  return { chunks, len: Math.ceil(n / chunks) };
};

const NORM_COMMON = `${GELU}
/** Mean and 1/√(var + 1e-5) of a row, merged from its chunks' (count, mean, M2). */
fn rowStats(row: u32) -> vec2<f32> {
  var n = 0.0; var mean = 0.0; var m2 = 0.0;
  for (var k = 0u; k < u.chunks; k++) {
    let at = (row * u.chunks + k) * 5u;
    let nb = stats[at]; let delta = stats[at + 1u] - mean; let total = n + nb;
    mean += delta * nb / total; m2 += stats[at + 2u] + delta * delta * n * nb / total; n = total;
  }
  return vec2<f32>(mean, inverseSqrt(m2 / n + 1e-5));
}`;

/** The affine and residual (pre) and GELU (post) in WGSL, for element `i` of channel `ch` given its xhat. */
const normOut = (attrs: NormAttrs, residual: boolean) =>
  `let pre = xhat * g[ch] + b[ch]${residual ? " + r[i]" : ""}; let post = ${attrs.gelu ? "gelu(pre)" : "pre"};`;

/** One workgroup of 64 per (row, chunk): `body` adds element e's values to the private sums. */
const chunkReduce = (sums: string[], body: string, write: string) => `
var<workgroup> part: array<array<f32, 64>, ${sums.length}>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let w = wid.y * nwg.x + wid.x;
  if (w >= u.rows * u.chunks) { return; }
  let row = w / u.chunks; let start = (w % u.chunks) * u.len; let end = min(start + u.len, u.n);
  ${sums.map((s) => `var ${s} = 0.0;`).join(" ")}
  for (var k = start + lid; k < end; k += 64u) {
    let i = row * u.n + k;
    ${body}
  }
  ${sums.map((s, j) => `part[${j}][lid] = ${s};`).join(" ")}
  for (var half = 32u; half > 0u; half >>= 1u) {
    workgroupBarrier();
    if (lid < half) { ${write} }
  }
}`;

function norm(
  { inputs, backend, attrs }: { inputs: { x: Info; g: Info; b: Info; r?: Info }; backend: unknown; attrs: unknown },
) {
  const be = backend as Backend, a = attrs as NormAttrs, { x, g, b, r } = inputs;
  const n = a.rowSize, rows = size(x) / n, { chunks, len } = chunking(n);
  const stats = out(be, [rows, chunks, 5]), y = out(be, x.shape);
  // Welford within a thread; the 64 threads' (count, mean, M2) merged pairwise.
  const statsCode = () =>
    `${bindings("rows: u32, n: u32, chunks: u32, len: u32", ["stats"], ["x"])}
${
      chunkReduce(
        ["cnt", "mean", "m2"],
        "let v = x[i]; cnt += 1.0; let d = v - mean; mean += d / cnt; m2 += d * (v - mean);",
        `let nb = part[0][lid + half]; let total = part[0][lid] + nb;
      if (nb > 0.0) {
        let delta = part[1][lid + half] - part[1][lid];
        part[2][lid] += part[2][lid + half] + delta * delta * part[0][lid] * nb / total;
        part[1][lid] += delta * nb / total; part[0][lid] = total;
      }
      if (half == 1u && lid == 0u) { for (var j = 0u; j < 3u; j++) { stats[w * 5u + j] = part[j][0]; } }`,
      )
    }`;
  dispatch(be, "normStats", statsCode, grid(rows * chunks, 1), [stats], [x], [
    ["u32", rows],
    ["u32", n],
    ["u32", chunks],
    ["u32", len],
  ]);
  const key = `norm_${a.gelu}_${!!r}`;
  const code = () =>
    `${bindings("size: u32, n: u32, chunks: u32, c: u32", ["y"], ["x", "stats", "g", "b", ...(r ? ["r"] : [])])}
${NORM_COMMON}
${MAIN}
  if (i >= u.size) { return; }
  let s = rowStats(i / u.n); let ch = i % u.c; let xhat = (x[i] - s.x) * s.y;
  ${normOut(a, !!r)}
  y[i] = post;
}`;
  dispatch(be, key, code, grid(size(x)), [y], [x, stats, g, b, ...(r ? [r] : [])], [
    ["u32", size(x)],
    ["u32", n],
    ["u32", chunks],
    ["u32", size(g)],
  ]);
  return [y, stats];
}

function normGrad(
  { inputs, backend, attrs }: {
    inputs: { dy: Info; x: Info; g: Info; b: Info; stats: Info; r?: Info };
    backend: unknown;
    attrs: unknown;
  },
) {
  const be = backend as Backend, a = attrs as NormAttrs, { dy, x, g, b, stats, r } = inputs;
  const n = a.rowSize, rows = size(x) / n, c = size(g), { chunks, len } = chunking(n);
  const res = r ? ["r"] : [];
  // dy0: the gradient before GELU; dxhat = dy0·g.
  const dy0 = `let s = rowStats(row); let ch = i % u.c; let xhat = (x[i] - s.x) * s.y; ${normOut(a, !!r)}
    let dy0 = ${a.gelu ? "dy[i] * geluGrad(pre)" : "dy[i]"};`;
  // 1. Workgroups of 64: the first rows·chunks sum dxhat and dxhat·xhat over a chunk of a row (into a copy of
  //    stats, at 3 and 4); the others sum dy0·xhat and dy0 of 64 channels over a block of pixels (for dg, db).
  const pixels = size(x) / c, blocks = Math.min(pixels, Math.max(1, Math.ceil(256 / Math.ceil(c / 64))));
  const per = Math.ceil(pixels / blocks), sr = out(be, [rows, chunks, 5]), cs = out(be, [blocks, 2, c]);
  const rowGroups = rows * chunks, channelGroups = Math.ceil(c / 64) * blocks;
  const sums = () =>
    `${
      bindings("rows: u32, n: u32, chunks: u32, len: u32, c: u32, pixels: u32, per: u32", ["sr", "cs"], [
        "dy",
        "x",
        "stats",
        "g",
        "b",
        ...res,
      ])
    }
${NORM_COMMON}
var<workgroup> part: array<array<f32, 64>, 2>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let w = wid.y * nwg.x + wid.x;
  if (w >= u.rows * u.chunks) { channelSums(w - u.rows * u.chunks, lid); return; }
  let row = w / u.chunks; let start = (w % u.chunks) * u.len; let end = min(start + u.len, u.n);
  var s1 = 0.0; var s2 = 0.0;
  for (var k = start + lid; k < end; k += 64u) {
    let i = row * u.n + k;
    ${dy0}
    let dxhat = dy0 * g[ch]; s1 += dxhat; s2 += dxhat * xhat;
  }
  part[0][lid] = s1; part[1][lid] = s2;
  for (var half = 32u; half > 0u; half >>= 1u) {
    workgroupBarrier();
    if (lid < half) { part[0][lid] += part[0][lid + half]; part[1][lid] += part[1][lid + half]; }
  }
  if (lid < 3u) { sr[w * 5u + lid] = stats[w * 5u + lid]; }
  if (lid == 0u) { sr[w * 5u + 3u] = part[0][0]; sr[w * 5u + 4u] = part[1][0]; }
}
fn channelSums(w: u32, lid: u32) {
  let block = w / ((u.c + 63u) / 64u); let ch0 = (w % ((u.c + 63u) / 64u)) * 64u + lid;
  if (block >= u.pixels || ch0 >= u.c) { return; }
  var s1 = 0.0; var s2 = 0.0;
  for (var p = block * u.per; p < min((block + 1u) * u.per, u.pixels); p++) {
    let i = p * u.c + ch0; let row = i / u.n;
    ${dy0}
    s1 += dy0 * xhat; s2 += dy0;
  }
  cs[(block * 2u) * u.c + ch0] = s1; cs[(block * 2u + 1u) * u.c + ch0] = s2;
}`;
  dispatch(be, `normSums_${a.gelu}_${!!r}`, sums, grid(rowGroups + channelGroups, 1), [sr, cs], [
    dy,
    x,
    stats,
    g,
    b,
    ...(r ? [r] : []),
  ], [
    ["u32", rows],
    ["u32", n],
    ["u32", chunks],
    ["u32", len],
    ["u32", c],
    ["u32", pixels],
    ["u32", per],
  ]);
  // 2. dx = rstd·(dxhat - mean(dxhat) - xhat·mean(dxhat·xhat)) (and dr = dy0); then, in the last c threads, dg
  //    and db: the channel sums over the blocks.
  const dx = out(be, x.shape), dr = r ? [out(be, x.shape)] : [], [dg, db] = [out(be, g.shape), out(be, b.shape)];
  const dxCode = () =>
    `${
      bindings("size: u32, n: u32, chunks: u32, c: u32, blocks: u32", ["dx", "dg", "db", ...(r ? ["dr"] : [])], [
        "dy",
        "x",
        "stats",
        "g",
        "b",
        "cs",
        ...res,
      ])
    }
${NORM_COMMON}
${MAIN}
  if (i >= u.size) {
    let ch = i - u.size;
    if (ch >= u.c) { return; }
    var s1 = 0.0; var s2 = 0.0;
    for (var k = 0u; k < u.blocks; k++) { s1 += cs[(k * 2u) * u.c + ch]; s2 += cs[(k * 2u + 1u) * u.c + ch]; }
    dg[ch] = s1; db[ch] = s2;
    return;
  }
  let row = i / u.n;
  ${dy0}
  var s1 = 0.0; var s2 = 0.0;
  for (var k = 0u; k < u.chunks; k++) {
    s1 += stats[(row * u.chunks + k) * 5u + 3u]; s2 += stats[(row * u.chunks + k) * 5u + 4u];
  }
  let nf = f32(u.n);
  dx[i] = s.y * (dy0 * g[ch] - s1 / nf - xhat * s2 / nf);${r ? " dr[i] = dy0;" : ""}
}`;
  dispatch(be, `normDx_${a.gelu}_${!!r}`, dxCode, grid(size(x) + c), [dx, dg, db, ...dr], [
    dy,
    x,
    sr,
    g,
    b,
    cs,
    ...(r ? [r] : []),
  ], [
    ["u32", size(x)],
    ["u32", n],
    ["u32", chunks],
    ["u32", c],
    ["u32", blocks],
  ]);
  be.disposeData(sr.dataId);
  be.disposeData(cs.dataId);
  return [dx, dg, db, ...dr];
}

// ------------------------------------------------------------------ AdamW and EMA, several weights a dispatch

/**
 * One dispatch updates up to `k` weights in place (workgroup row y = the weight): `fields` are the buffers of
 * each weight (the first `written` of them updated), `update` the WGSL that reads and writes them for index i.
 */
function multiTensor(
  be: Backend,
  name: string,
  fields: string[],
  written: number,
  update: (j: number) => string,
  params: Uniform[],
  paramNames: string,
  tensors: Info[][], // per weight, its buffers in the order of `fields`
) {
  const k = Math.min(32, Math.floor(be.device.limits.maxStorageBuffersPerShaderStage / fields.length));
  for (const t of tensors.flatMap((t) => t.slice(0, written))) {
    if (be.tensorMap.get(t.dataId).refCount > 1) throw new Error(`${name}: a tensor updated in place shares its data`);
  }
  const order = tensors.map((_, i) => i).sort((a, b) => size(tensors[b][0]) - size(tensors[a][0]));
  for (let s = 0; s < order.length; s += k) {
    const group = order.slice(s, s + k).map((i) => tensors[i]);
    const names = (f: string[]) => group.flatMap((_, j) => f.map((n) => `${n}${j}`));
    const code = () =>
      `${
        bindings(
          `${paramNames}, ${group.map((_, j) => `size${j}: u32`).join(", ")}`,
          names(fields.slice(0, written)),
          names(fields.slice(written)),
        )
      }
${MAIN}
  switch wid.z {
${group.map((_, j) => `    case ${j}u: { if (i < u.size${j}) { ${update(j)} } }`).join("\n")}
    default: {}
  }
}`;
    const [x, y] = grid(size(group[0][0]));
    dispatch(
      be,
      `${name}_${group.length}`,
      code,
      [x, y, group.length],
      group.flatMap((t) => t.slice(0, written)),
      group.flatMap((t) => t.slice(written)),
      [...params, ...group.map((t): Uniform => ["u32", size(t[0])])],
    );
  }
}

/** AdamW: m ← β1·m + (1-β1)·g, v ← β2·v + (1-β2)·g², w ← w·(1 - lr·λ) - lr·(m/c1)/(√(v/c2) + ε). */
function adamw({ inputs, backend, attrs }: { inputs: Record<string, Info>; backend: unknown; attrs: unknown }) {
  const s = attrs as Record<"lr" | "beta1" | "beta2" | "eps" | "weightDecay" | "c1" | "c2", number>;
  const count = Object.keys(inputs).length / 4;
  const tensors = Array.from({ length: count }, (_, i) => ["w", "m", "v", "g"].map((f) => inputs[`${f}${i}`]));
  const update = (j: number) =>
    `let g = g${j}[i]; let m = u.beta1 * m${j}[i] + (1.0 - u.beta1) * g; let v = u.beta2 * v${j}[i] + (1.0 - u.beta2) * g * g;
      m${j}[i] = m; v${j}[i] = v; w${j}[i] = w${j}[i] * (1.0 - u.lr * u.decay) - u.lr * (m / u.c1) / (sqrt(v / u.c2) + u.eps);`;
  const params: Uniform[] = [s.lr, s.beta1, s.beta2, s.eps, s.weightDecay, s.c1, s.c2].map((v) => ["f32", v]);
  multiTensor(
    backend as Backend,
    "adamw",
    ["w", "m", "v", "g"],
    3,
    update,
    params,
    "lr: f32, beta1: f32, beta2: f32, eps: f32, decay: f32, c1: f32, c2: f32",
    tensors,
  );
  return [];
}

/** EMA: e ← β·e + (1-β)·w. */
function ema({ inputs, backend, attrs }: { inputs: Record<string, Info>; backend: unknown; attrs: unknown }) {
  const count = Object.keys(inputs).length / 2;
  const tensors = Array.from({ length: count }, (_, i) => [inputs[`e${i}`], inputs[`w${i}`]]);
  const update = (j: number) => `e${j}[i] = u.beta * e${j}[i] + (1.0 - u.beta) * w${j}[i];`;
  multiTensor(
    backend as Backend,
    "ema",
    ["e", "w"],
    1,
    update,
    [["f32", (attrs as { beta: number }).beta]],
    "beta: f32",
    tensors,
  );
  return [];
}

// ------------------------------------------------------------------ attention, flash style
// One thread per query row (or key row), the other side streamed through workgroup memory in tiles of T rows:
// scores are recomputed, never stored. q, k, v are read from qkv [b, n, 3c] and o written to [b, n, c] at the
// head's d columns, so the head split and merge cost nothing. lse: the log-sum-exp of each query row's scores.

interface AttnDims {
  b: number;
  n: number;
  c: number;
  heads: number;
  d: number;
  t: number; // rows per tile: two tiles of t·d floats (and 2t) fit in 16 KiB of workgroup memory
}
function attnDims(qkv: Info, heads: number): AttnDims {
  const [b, n, c3] = qkv.shape, c = c3 / 3, d = c / heads;
  return { b, n, c, heads, d, t: Math.min(64, Math.floor(4000 / (2 * d + 2))) };
}
const attnUniforms = (
  a: AttnDims,
): Uniform[] => [["u32", a.n], ["u32", a.heads], ["u32", a.c], ["f32", 1 / Math.sqrt(a.d)]];
const ATTN_HEAD = (a: AttnDims) => `
const D = ${a.d}u;
const T = ${a.t}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wid.y; let b = bh / u.heads; let h = bh % u.heads;
  let row = wid.x * 64u + lid; let valid = row < u.n;
  let stride = 3u * u.c; let base = b * u.n * stride + h * D; // q of (b, token 0, head h) in qkv
  let obase = b * u.n * u.c + h * D; // the same in o and dy`;

function attention({ inputs: { qkv }, backend, attrs }: { inputs: { qkv: Info }; backend: unknown; attrs: unknown }) {
  const be = backend as Backend, a = attnDims(qkv, (attrs as { heads: number }).heads);
  const o = out(be, [a.b, a.n, a.c]), lse = out(be, [a.b * a.heads, a.n]);
  const code = () =>
    `${bindings("n: u32, heads: u32, c: u32, scale: f32", ["o", "lse"], ["qkv"])}
var<workgroup> kt: array<f32, ${a.t * a.d}>;
var<workgroup> vt: array<f32, ${a.t * a.d}>;
${ATTN_HEAD(a)}
  var q: array<f32, D>; var acc: array<f32, D>;
  if (valid) { for (var d = 0u; d < D; d++) { q[d] = qkv[base + row * stride + d] * u.scale; acc[d] = 0.0; } }
  var mx = -1e30; var l = 0.0;
  for (var j0 = 0u; j0 < u.n; j0 += T) {
    for (var e = lid; e < T * D; e += 64u) {
      let j = j0 + e / D;
      if (j < u.n) { let at = base + j * stride + e % D; kt[e] = qkv[at + u.c]; vt[e] = qkv[at + 2u * u.c]; }
    }
    workgroupBarrier();
    if (valid) {
      let count = min(T, u.n - j0);
      var s: array<f32, T>; var m = mx;
      for (var j = 0u; j < count; j++) {
        var dot = 0.0;
        for (var d = 0u; d < D; d++) { dot += q[d] * kt[j * D + d]; }
        s[j] = dot; m = max(m, dot);
      }
      let rescale = exp(mx - m); l *= rescale;
      for (var d = 0u; d < D; d++) { acc[d] *= rescale; }
      for (var j = 0u; j < count; j++) {
        let p = exp(s[j] - m); l += p;
        for (var d = 0u; d < D; d++) { acc[d] += p * vt[j * D + d]; }
      }
      mx = m;
    }
    workgroupBarrier();
  }
  if (valid) {
    for (var d = 0u; d < D; d++) { o[obase + row * u.c + d] = acc[d] / l; }
    lse[bh * u.n + row] = mx + log(l);
  }
}`;
  dispatch(be, `attention_${a.d}`, code, [Math.ceil(a.n / 64), a.b * a.heads], [o, lse], [qkv], attnUniforms(a));
  return [o, lse];
}

/**
 * The backward pass (FlashAttention-2's): D_i = dO_i·O_i; per key row j, dv_j = Σ_i p_ij·dO_i and
 * dk_j = Σ_i ds_ij·q_i/√d; per query row i, dq_i = Σ_j ds_ij·k_j/√d; with p_ij = exp(q_i·k_j/√d - lse_i),
 * ds_ij = p_ij·(dO_i·v_j - D_i). Both passes write into one dqkv.
 */
function attentionGrad(
  { inputs, backend, attrs }: {
    inputs: { dy: Info; qkv: Info; o: Info; lse: Info };
    backend: unknown;
    attrs: unknown;
  },
) {
  const be = backend as Backend, { dy, qkv, o, lse } = inputs, a = attnDims(qkv, (attrs as { heads: number }).heads);
  const dsum = out(be, [a.b * a.heads, a.n]);
  const dsumCode = () =>
    `${bindings("rows: u32, n: u32, heads: u32, c: u32, d: u32", ["dsum"], ["dy", "o"])}
${MAIN}
  if (i >= u.rows) { return; }
  let bh = i / u.n; let at = ((bh / u.heads) * u.n + i % u.n) * u.c + (bh % u.heads) * u.d;
  var s = 0.0;
  for (var d = 0u; d < u.d; d++) { s += dy[at + d] * o[at + d]; }
  dsum[i] = s;
}`;
  dispatch(be, "attentionDsum", dsumCode, grid(a.b * a.heads * a.n), [dsum], [dy, o], [
    ["u32", a.b * a.heads * a.n],
    ["u32", a.n],
    ["u32", a.heads],
    ["u32", a.c],
    ["u32", a.d],
  ]);
  const dqkv = out(be, qkv.shape);
  const tiles = (names: string[]) => names.map((n) => `var<workgroup> ${n}: array<f32, ${a.t * a.d}>;`).join("\n");
  const kvCode = () =>
    `${bindings("n: u32, heads: u32, c: u32, scale: f32", ["dqkv"], ["qkv", "dy", "lse", "dsum"])}
${tiles(["qt", "gt"])}
var<workgroup> lt: array<f32, ${a.t}>;
var<workgroup> st: array<f32, ${a.t}>;
${ATTN_HEAD(a)}
  var k: array<f32, D>; var v: array<f32, D>; var dk: array<f32, D>; var dv: array<f32, D>;
  if (valid) {
    for (var d = 0u; d < D; d++) {
      k[d] = qkv[base + row * stride + u.c + d]; v[d] = qkv[base + row * stride + 2u * u.c + d]; dk[d] = 0.0; dv[d] = 0.0;
    }
  }
  for (var i0 = 0u; i0 < u.n; i0 += T) {
    for (var e = lid; e < T * D; e += 64u) {
      let i = i0 + e / D;
      if (i < u.n) { qt[e] = qkv[base + i * stride + e % D] * u.scale; gt[e] = dy[obase + i * u.c + e % D]; }
    }
    for (var e = lid; e < T; e += 64u) { if (i0 + e < u.n) { lt[e] = lse[bh * u.n + i0 + e]; st[e] = dsum[bh * u.n + i0 + e]; } }
    workgroupBarrier();
    if (valid) {
      for (var i = 0u; i < min(T, u.n - i0); i++) {
        var s = 0.0; var dp = 0.0;
        for (var d = 0u; d < D; d++) { s += qt[i * D + d] * k[d]; dp += gt[i * D + d] * v[d]; }
        let p = exp(s - lt[i]); let ds = p * (dp - st[i]);
        for (var d = 0u; d < D; d++) { dv[d] += p * gt[i * D + d]; dk[d] += ds * qt[i * D + d]; }
      }
    }
    workgroupBarrier();
  }
  if (valid) {
    for (var d = 0u; d < D; d++) { dqkv[base + row * stride + u.c + d] = dk[d]; dqkv[base + row * stride + 2u * u.c + d] = dv[d]; }
  }
}`;
  dispatch(
    be,
    `attentionDkDv_${a.d}`,
    kvCode,
    [Math.ceil(a.n / 64), a.b * a.heads],
    [dqkv],
    [qkv, dy, lse, dsum],
    attnUniforms(a),
  );
  const qCode = () =>
    `${bindings("n: u32, heads: u32, c: u32, scale: f32", ["dqkv"], ["qkv", "dy", "lse", "dsum"])}
${tiles(["kt", "vt"])}
${ATTN_HEAD(a)}
  var q: array<f32, D>; var g: array<f32, D>; var dq: array<f32, D>; var l = 0.0; var di = 0.0;
  if (valid) {
    for (var d = 0u; d < D; d++) { q[d] = qkv[base + row * stride + d] * u.scale; g[d] = dy[obase + row * u.c + d]; dq[d] = 0.0; }
    l = lse[bh * u.n + row]; di = dsum[bh * u.n + row];
  }
  for (var j0 = 0u; j0 < u.n; j0 += T) {
    for (var e = lid; e < T * D; e += 64u) {
      let j = j0 + e / D;
      if (j < u.n) { let at = base + j * stride + e % D; kt[e] = qkv[at + u.c]; vt[e] = qkv[at + 2u * u.c]; }
    }
    workgroupBarrier();
    if (valid) {
      for (var j = 0u; j < min(T, u.n - j0); j++) {
        var s = 0.0; var dp = 0.0;
        for (var d = 0u; d < D; d++) { s += q[d] * kt[j * D + d]; dp += g[d] * vt[j * D + d]; }
        let ds = exp(s - l) * (dp - di);
        for (var d = 0u; d < D; d++) { dq[d] += ds * kt[j * D + d]; }
      }
    }
    workgroupBarrier();
  }
  if (valid) { for (var d = 0u; d < D; d++) { dqkv[base + row * stride + d] = dq[d] * u.scale; } }
}`;
  dispatch(
    be,
    `attentionDq_${a.d}`,
    qCode,
    [Math.ceil(a.n / 64), a.b * a.heads],
    [dqkv],
    [qkv, dy, lse, dsum],
    attnUniforms(a),
  );
  be.disposeData(dsum.dataId);
  return dqkv;
}

// ------------------------------------------------------------------ registration

const KERNELS: [string, (args: never) => Info | Info[]][] = [
  [FUSED.norm, norm],
  [FUSED.normGrad, normGrad],
  [FUSED.gelu, gelu],
  [FUSED.geluGrad, geluGrad],
  [FUSED.attention, attention],
  [FUSED.attentionGrad, attentionGrad],
  [FUSED.adamw, adamw],
  [FUSED.ema, ema],
];

let registered = false;
/** The most storage buffers a fused kernel binds (the norm's backward pass with a residual). */
const BINDINGS = 11;

/**
 * Registers tfjs's WebGPU backend anew, on a device with the adapter's limit of storage buffers per shader (tfjs
 * asks for WebGPU's default, 8), and the fused kernels when that limit allows them.
 */
export async function registerWebgpu(log: (line: string) => void) {
  const { WebGPUBackend } = await import("@tensorflow/tfjs-backend-webgpu");
  if (registered) return;
  registered = true;
  tf.removeBackend("webgpu");
  tf.registerBackend("webgpu", factory, 3);
  async function factory() {
    const adapter = (await navigator.gpu.requestAdapter({ powerPreference: "high-performance" }))!;
    const l = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: adapter.features.has("timestamp-query") ? ["timestamp-query"] : [],
      requiredLimits: { // tfjs's, and the storage buffers
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      },
    });
    for (const [kernelName, f] of KERNELS) {
      if (tf.getKernel(kernelName, "webgpu")) tf.unregisterKernel(kernelName, "webgpu");
      if (l.maxStorageBuffersPerShaderStage < BINDINGS) continue;
      tf.registerKernel({ kernelName, backendName: "webgpu", kernelFunc: f as unknown as tf.KernelFunc });
    }
    if (l.maxStorageBuffersPerShaderStage < BINDINGS) {
      log(
        `webgpu: ${l.maxStorageBuffersPerShaderStage} storage buffers per shader, ${BINDINGS} needed: no fused kernels`,
      );
    }
    return new WebGPUBackend(device, adapter.info);
  }
}
