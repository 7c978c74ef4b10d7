// The kernels of fused.ts for tfjs's WebGPU backend, in WGSL, run by webgpu_kernels.ts. Numbers reach the shaders as
// uniforms, never as scalar tensors.
import { fusedKernelConfigs } from "./fused.ts";
import {
  type Backend,
  grid,
  type Info,
  type KernelArgs,
  MAIN,
  output,
  registerWebgpuBackend,
  run,
  size,
} from "./webgpu_kernels.ts";

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

function gelu({ inputs: { x }, backend }: KernelArgs<{ x: Info }>) {
  const be = backend as Backend, y = output(be, x.shape);
  const code = () => `${GELU}\n${MAIN} if (i < u.size) { y[i] = gelu(x[i]); } }`;
  run(be, { key: "gelu", code, groups: grid(size(x)), outputs: { y }, inputs: { x }, u32: { size: size(x) } });
  return y;
}

function geluGrad({ inputs: { dy, x }, backend }: KernelArgs<{ dy: Info; x: Info }>) {
  const be = backend as Backend, dx = output(be, x.shape);
  const code = () => `${GELU}\n${MAIN} if (i < u.size) { dx[i] = dy[i] * geluGrad(x[i]); } }`;
  run(be, { key: "geluGrad", code, groups: grid(size(x)), outputs: { dx }, inputs: { dy, x }, u32: { size: size(x) } });
  return dx;
}

// ------------------------------------------------------------------ norm (+ residual + GELU)
// Rows of n values are cut into `chunks` of `len`; a workgroup of 64 reduces a chunk to (count, mean, M2), which
// the later shaders merge per row (Chan et al.'s parallel variance). stats [rows, chunks, 5] holds those three,
// and the backward pass's two row sums in the last two. Forward: 2 dispatches; backward: 2.

interface NormAttrs {
  rowSize: number;
  gelu: boolean;
}
type NormInputs = { x: Info; g: Info; b: Info; r?: Info; dy?: Info; stats?: Info };

function layout(inputs: NormInputs, attrs: unknown) {
  const { rowSize: n, gelu } = attrs as NormAttrs, x = inputs.x, c = size(inputs.g);
  const chunks = Math.min(32, Math.ceil(n / 4096));
  const residual: Record<string, Info> = inputs.r ? { r: inputs.r } : {};
  return { n, gelu, c, rows: size(x) / n, chunks, len: Math.ceil(n / chunks), residual, key: `${gelu}_${!!inputs.r}` };
}

/**
 * WGSL: rowStats(row) = (mean, 1/√(var + 1e-5)); pre, post: the norm of element i before and after GELU; in the
 * backward pass, dy0: the gradient before GELU.
 */
const normCommon = (gelu: boolean, residual: boolean, backward = true) =>
  `${GELU}
fn rowStats(row: u32) -> vec2<f32> {
  var n = 0.0; var mean = 0.0; var m2 = 0.0;
  for (var k = 0u; k < u.chunks; k++) {
    let at = (row * u.chunks + k) * 5u;
    let nb = stats[at]; let delta = stats[at + 1u] - mean; let total = n + nb;
    mean += delta * nb / total; m2 += stats[at + 2u] + delta * delta * n * nb / total; n = total;
  }
  return vec2<f32>(mean, inverseSqrt(m2 / n + 1e-5));
}
fn pre(i: u32, xhat: f32) -> f32 { return xhat * g[i % u.c] + b[i % u.c]${residual ? " + r[i]" : ""}; }
fn post(v: f32) -> f32 { return ${gelu ? "gelu(v)" : "v"}; }
${backward ? `fn dy0(i: u32, xhat: f32) -> f32 { return ${gelu ? "dy[i] * geluGrad(pre(i, xhat))" : "dy[i]"}; }` : ""}`;

/** Sums over the 64 threads of a workgroup, in place in `part` (thread 0 holds them after). */
const reduce64 = (merge: string) => `
  for (var half = 32u; half > 0u; half >>= 1u) {
    workgroupBarrier();
    if (lid < half) { ${merge} }
  }`;
const WG64 = `@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let w = wid.y * nwg.x + wid.x;`;

function norm({ inputs, backend, attrs }: KernelArgs<NormInputs>) {
  const be = backend as Backend, { x, g, b } = inputs, L = layout(inputs, attrs);
  const stats = output(be, [L.rows, L.chunks, 5]), y = output(be, x.shape);
  run(be, { // Welford within a thread, then the 64 threads' (count, mean, M2) merged pairwise
    key: "normStats",
    groups: grid(L.rows * L.chunks, 1),
    outputs: { stats },
    inputs: { x },
    u32: { rows: L.rows, n: L.n, chunks: L.chunks, len: L.len },
    code: () => `
var<workgroup> part: array<array<f32, 64>, 3>;
${WG64}
  if (w >= u.rows * u.chunks) { return; }
  let row = w / u.chunks; let start = (w % u.chunks) * u.len; let end = min(start + u.len, u.n);
  var cnt = 0.0; var mean = 0.0; var m2 = 0.0;
  for (var k = start + lid; k < end; k += 64u) {
    let v = x[row * u.n + k]; cnt += 1.0; let d = v - mean; mean += d / cnt; m2 += d * (v - mean);
  }
  part[0][lid] = cnt; part[1][lid] = mean; part[2][lid] = m2;
  ${
      reduce64(`let nb = part[0][lid + half]; let total = part[0][lid] + nb;
    if (nb > 0.0) {
      let delta = part[1][lid + half] - part[1][lid];
      part[2][lid] += part[2][lid + half] + delta * delta * part[0][lid] * nb / total;
      part[1][lid] += delta * nb / total; part[0][lid] = total;
    }`)
    }
  if (lid < 3u) { stats[w * 5u + lid] = part[lid][0]; }
}`,
  });
  run(be, {
    key: `norm_${L.key}`,
    groups: grid(size(x)),
    outputs: { y },
    inputs: { x, stats, g, b, ...L.residual },
    u32: { size: size(x), n: L.n, chunks: L.chunks, c: L.c },
    code: () =>
      `${normCommon(L.gelu, !!inputs.r, false)}
${MAIN}
  if (i >= u.size) { return; }
  let s = rowStats(i / u.n);
  y[i] = post(pre(i, (x[i] - s.x) * s.y));
}`,
  });
  return [y, stats];
}

/** dx = rstd·(dxhat - mean(dxhat) - xhat·mean(dxhat·xhat)) with dxhat = dy0·g; dg = Σ dy0·xhat, db = Σ dy0; dr = dy0. */
function normGrad({ inputs, backend, attrs }: KernelArgs<NormInputs>) {
  const be = backend as Backend, { x, g, b, dy, stats } = inputs as Required<NormInputs>, L = layout(inputs, attrs);
  // 1. The first rows·chunks workgroups sum dxhat and dxhat·xhat over a chunk of a row (into sr: stats with
  //    them); the others sum dy0·xhat and dy0 for 64 channels over a block of pixels (into cs).
  const pixels = size(x) / L.c, blocks = Math.min(pixels, Math.ceil(256 / Math.ceil(L.c / 64)));
  const per = Math.ceil(pixels / blocks), sr = output(be, [L.rows, L.chunks, 5]), cs = output(be, [blocks, 2, L.c]);
  run(be, {
    key: `normSums_${L.key}`,
    groups: grid(L.rows * L.chunks + Math.ceil(L.c / 64) * blocks, 1),
    outputs: { sr, cs },
    inputs: { dy, x, stats, g, b, ...L.residual },
    u32: { rows: L.rows, n: L.n, chunks: L.chunks, len: L.len, c: L.c, pixels, per },
    code: () =>
      `${normCommon(L.gelu, !!inputs.r)}
var<workgroup> part: array<array<f32, 64>, 2>;
${WG64}
  if (w >= u.rows * u.chunks) { channelSums(w - u.rows * u.chunks, lid); return; }
  let row = w / u.chunks; let start = (w % u.chunks) * u.len; let end = min(start + u.len, u.n);
  let s = rowStats(row);
  var s1 = 0.0; var s2 = 0.0;
  for (var k = start + lid; k < end; k += 64u) {
    let i = row * u.n + k; let xhat = (x[i] - s.x) * s.y; let dxhat = dy0(i, xhat) * g[i % u.c];
    s1 += dxhat; s2 += dxhat * xhat;
  }
  part[0][lid] = s1; part[1][lid] = s2;
  ${reduce64("part[0][lid] += part[0][lid + half]; part[1][lid] += part[1][lid + half];")}
  if (lid < 3u) { sr[w * 5u + lid] = stats[w * 5u + lid]; }
  if (lid == 0u) { sr[w * 5u + 3u] = part[0][0]; sr[w * 5u + 4u] = part[1][0]; }
}
fn channelSums(w: u32, lid: u32) {
  let groups = (u.c + 63u) / 64u; let block = w / groups; let ch = (w % groups) * 64u + lid;
  if (block >= u.pixels || ch >= u.c) { return; }
  var s1 = 0.0; var s2 = 0.0;
  for (var p = block * u.per; p < min((block + 1u) * u.per, u.pixels); p++) {
    let i = p * u.c + ch; let s = rowStats(i / u.n); let xhat = (x[i] - s.x) * s.y; let d = dy0(i, xhat);
    s1 += d * xhat; s2 += d;
  }
  cs[(block * 2u) * u.c + ch] = s1; cs[(block * 2u + 1u) * u.c + ch] = s2;
}`,
  });
  // 2. A thread per element for dx (and dr), then c more for dg and db: the channel sums over the blocks.
  const dx = output(be, x.shape), [dg, db] = [output(be, g.shape), output(be, b.shape)];
  const dr: Record<string, Info> = inputs.r ? { dr: output(be, x.shape) } : {};
  run(be, {
    key: `normDx_${L.key}`,
    groups: grid(size(x) + L.c),
    outputs: { dx, dg, db, ...dr },
    inputs: { dy, x, stats: sr, g, b, cs, ...L.residual },
    u32: { size: size(x), n: L.n, chunks: L.chunks, c: L.c, blocks },
    code: () =>
      `${normCommon(L.gelu, !!inputs.r)}
${MAIN}
  if (i >= u.size) {
    let ch = i - u.size;
    if (ch >= u.c) { return; }
    var s1 = 0.0; var s2 = 0.0;
    for (var k = 0u; k < u.blocks; k++) { s1 += cs[(k * 2u) * u.c + ch]; s2 += cs[(k * 2u + 1u) * u.c + ch]; }
    dg[ch] = s1; db[ch] = s2;
    return;
  }
  let row = i / u.n; let s = rowStats(row); let xhat = (x[i] - s.x) * s.y; let d = dy0(i, xhat);
  var s1 = 0.0; var s2 = 0.0;
  for (var k = 0u; k < u.chunks; k++) { s1 += stats[(row * u.chunks + k) * 5u + 3u]; s2 += stats[(row * u.chunks + k) * 5u + 4u]; }
  dx[i] = s.y * (d * g[i % u.c] - (s1 + xhat * s2) / f32(u.n));${inputs.r ? " dr[i] = d;" : ""}
}`,
  });
  be.disposeData(sr.dataId);
  be.disposeData(cs.dataId);
  return [dx, dg, db, ...Object.values(dr)];
}

// ------------------------------------------------------------------ AdamW and EMA, several weights a dispatch

/**
 * Updates in place, up to `limit / fields` weights a dispatch (workgroup z = the weight): `fields` are each weight's
 * tensors (the first `written` updated), `update(j)` the WGSL that updates element i of weight j.
 */
function multiTensor(
  be: Backend,
  key: string,
  fields: string[],
  written: number,
  tensors: Info[][],
  f32: Record<string, number>,
  update: (j: number) => string,
) {
  for (const t of tensors.flatMap((t) => t.slice(0, written))) {
    if (be.tensorMap.get(t.dataId).refCount > 1) throw new Error(`${key}: a tensor updated in place shares its data`);
  }
  const k = Math.min(32, Math.floor(be.device.limits.maxStorageBuffersPerShaderStage / fields.length));
  const bySize = [...tensors].sort((p, q) => size(q[0]) - size(p[0]));
  for (let s = 0; s < bySize.length; s += k) {
    const group = bySize.slice(s, s + k);
    const named = (from: number, to: number) =>
      Object.fromEntries(group.flatMap((t, j) => fields.slice(from, to).map((f, e) => [`${f}${j}`, t[from + e]])));
    run(be, {
      key: `${key}_${group.length}`,
      groups: [...grid(size(group[0][0])), group.length],
      outputs: named(0, written),
      inputs: named(written, fields.length),
      u32: Object.fromEntries(group.map((t, j) => [`size${j}`, size(t[0])])),
      f32,
      code: () =>
        `${MAIN}
  switch wid.z {
${group.map((_, j) => `    case ${j}u: { if (i < u.size${j}) { ${update(j)} } }`).join("\n")}
    default: {}
  }
}`,
    });
  }
}

/** AdamW: m ← β1·m + (1-β1)·g, v ← β2·v + (1-β2)·g², w ← w·(1 - lr·λ) - lr·(m/c1)/(√(v/c2) + ε). */
function adamw({ inputs, backend, attrs }: KernelArgs<Record<string, Info>>) {
  const count = Object.keys(inputs).length / 4;
  const tensors = Array.from({ length: count }, (_, i) => ["w", "m", "v", "g"].map((f) => inputs[`${f}${i}`]));
  multiTensor(
    backend as Backend,
    "adamw",
    ["w", "m", "v", "g"],
    3,
    tensors,
    attrs as Record<string, number>,
    (j) =>
      `let g = g${j}[i]; let m = u.beta1 * m${j}[i] + (1.0 - u.beta1) * g; let v = u.beta2 * v${j}[i] + (1.0 - u.beta2) * g * g;
      m${j}[i] = m; v${j}[i] = v; w${j}[i] = w${j}[i] * (1.0 - u.lr * u.weightDecay) - u.lr * (m / u.c1) / (sqrt(v / u.c2) + u.eps);`,
  );
  return [];
}

/** EMA: e ← β·e + (1-β)·w. */
function ema({ inputs, backend, attrs }: KernelArgs<Record<string, Info>>) {
  const tensors = Array.from({ length: Object.keys(inputs).length / 2 }, (_, i) => [inputs[`e${i}`], inputs[`w${i}`]]);
  multiTensor(
    backend as Backend,
    "ema",
    ["e", "w"],
    1,
    tensors,
    attrs as Record<string, number>,
    (j) => `e${j}[i] = u.beta * e${j}[i] + (1.0 - u.beta) * w${j}[i];`,
  );
  return [];
}

// ------------------------------------------------------------------ attention, flash style
// One thread per query row (or key row), the other side streamed through workgroup memory in tiles of T rows:
// scores are recomputed, never stored. q, k, v are read from qkv [b, n, 3c] and o written to [b, n, c] at the
// head's d columns, so the head split and merge cost nothing. lse: each query row's log-sum-exp of scores.

function attnLayout(qkv: Info, attrs: unknown) {
  const heads = (attrs as { heads: number }).heads, [b, n, c3] = qkv.shape, c = c3 / 3, d = c / heads;
  const t = Math.min(64, Math.floor(4000 / (2 * d + 2))); // two tiles of t·d floats and two of t: < 16 KiB
  return {
    b,
    n,
    c,
    heads,
    d,
    t,
    groups: [Math.ceil(n / 64), b * heads],
    u32: { n, heads, c },
    f32: { scale: 1 / Math.sqrt(d) },
  };
}
/** WGSL: constants, tiles, and the start of main for the thread of `row` in head h of batch item b. */
const attnMain = (a: ReturnType<typeof attnLayout>, tiles: string[], small: string[] = []) => `
const D = ${a.d}u;
const T = ${a.t}u;
${tiles.map((n) => `var<workgroup> ${n}: array<f32, ${a.t * a.d}>;`).join("\n")}
${small.map((n) => `var<workgroup> ${n}: array<f32, ${a.t}>;`).join("\n")}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wid.y; let b = bh / u.heads; let h = bh % u.heads;
  let row = wid.x * 64u + lid; let valid = row < u.n;
  let stride = 3u * u.c; let base = b * u.n * stride + h * D; // q of (b, token 0, head h) in qkv
  let obase = b * u.n * u.c + h * D; // the same in o and dy`;
/** WGSL: loads the k and v rows of the tile at j0 into kt and vt. */
const LOAD_KV = `for (var e = lid; e < T * D; e += 64u) {
      let j = j0 + e / D;
      if (j < u.n) { let at = base + j * stride + e % D; kt[e] = qkv[at + u.c]; vt[e] = qkv[at + 2u * u.c]; }
    }
    workgroupBarrier();`;

function attention({ inputs: { qkv }, backend, attrs }: KernelArgs<{ qkv: Info }>) {
  const be = backend as Backend, a = attnLayout(qkv, attrs);
  const o = output(be, [a.b, a.n, a.c]), lse = output(be, [a.b * a.heads, a.n]);
  run(be, {
    key: `attention_${a.d}`,
    groups: a.groups,
    outputs: { o, lse },
    inputs: { qkv },
    u32: a.u32,
    f32: a.f32,
    code: () =>
      `${attnMain(a, ["kt", "vt"])}
  var q: array<f32, D>; var acc: array<f32, D>;
  if (valid) { for (var d = 0u; d < D; d++) { q[d] = qkv[base + row * stride + d] * u.scale; acc[d] = 0.0; } }
  var mx = -1e30; var l = 0.0; // running max and sum of exp(score - mx)
  for (var j0 = 0u; j0 < u.n; j0 += T) {
    ${LOAD_KV}
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
}`,
  });
  return [o, lse];
}

/**
 * FlashAttention-2's backward pass: D_i = dO_i·O_i; per key row j, dv_j = Σ_i p_ij·dO_i and dk_j = Σ_i ds_ij·q_i/√d;
 * per query row i, dq_i = Σ_j ds_ij·k_j/√d; p_ij = exp(q_i·k_j/√d - lse_i), ds_ij = p_ij·(dO_i·v_j - D_i).
 * The key and the query passes write into one dqkv. 3 dispatches.
 */
function attentionGrad({ inputs: { dy, qkv, o, stats: lse }, backend, attrs }: KernelArgs<Record<string, Info>>) {
  const be = backend as Backend, a = attnLayout(qkv, attrs);
  const dsum = output(be, [a.b * a.heads, a.n]), dqkv = output(be, qkv.shape);
  run(be, {
    key: "attentionD",
    groups: grid(a.b * a.heads * a.n),
    outputs: { dsum },
    inputs: { dy, o },
    u32: { rows: a.b * a.heads * a.n, ...a.u32, d: a.d },
    code: () =>
      `${MAIN}
  if (i >= u.rows) { return; }
  let bh = i / u.n; let at = ((bh / u.heads) * u.n + i % u.n) * u.c + (bh % u.heads) * u.d;
  var s = 0.0;
  for (var d = 0u; d < u.d; d++) { s += dy[at + d] * o[at + d]; }
  dsum[i] = s;
}`,
  });
  const pass = { groups: a.groups, inputs: { qkv, dy, lse, dsum }, u32: a.u32, f32: a.f32 };
  run(be, {
    ...pass,
    key: `attentionDkDv_${a.d}`,
    outputs: { dqkv },
    code: () =>
      `${attnMain(a, ["qt", "gt"], ["lt", "st"])}
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
}`,
  });
  run(be, {
    ...pass,
    key: `attentionDq_${a.d}`,
    outputs: { dqkv },
    code: () =>
      `${attnMain(a, ["kt", "vt"])}
  var q: array<f32, D>; var g: array<f32, D>; var dq: array<f32, D>; var l = 0.0; var di = 0.0;
  if (valid) {
    for (var d = 0u; d < D; d++) { q[d] = qkv[base + row * stride + d] * u.scale; g[d] = dy[obase + row * u.c + d]; dq[d] = 0.0; }
    l = lse[bh * u.n + row]; di = dsum[bh * u.n + row];
  }
  for (var j0 = 0u; j0 < u.n; j0 += T) {
    ${LOAD_KV}
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
}`,
  });
  be.disposeData(dsum.dataId);
  return dqkv;
}

/** Registers tfjs's WebGPU backend (webgpu_kernels.ts) with the kernels above; the norm's gradient binds 11 buffers. */
export const registerWebgpu = (log: (line: string) => void) =>
  registerWebgpuBackend(
    fusedKernelConfigs("webgpu", { norm, normGrad, gelu, geluGrad, attention, attentionGrad, adamw, ema }),
    11,
    log,
  );
