// The kernels of fused.ts for tfjs's wasm backend. Each is one loop over views of the wasm heap where tfjs would run
// several kernels (and allocate a tensor for each); the attention's products go to XNNPACK, a block of query rows at a
// time, so no [n, n] matrix is ever whole.
import * as tf from "@tensorflow/tfjs";
import { type AdamWStep, fusedKernelConfigs, type FusedKernels } from "./fused.ts";
import { alloc, free, heap, matMul2d, onBackend, softmaxRows } from "./wasm_kernels.ts";
import { sgemm } from "./native.ts";

type Info = tf.TensorInfo;
const size = (t: Info) => t.shape.reduce((a, b) => a * b, 1);

/** Φ(x), the normal CDF, by Abramowitz & Stegun 7.1.26 for erf (|error| < 1.5e-7, as tfjs's Erf), given e^(-x²/2). */
function phi(x: number, gauss: number) {
  const t = 1 / (1 + 0.3275911 * Math.SQRT1_2 * Math.abs(x));
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * gauss;
  return 0.5 * (x >= 0 ? 1 + y : 1 - y);
}
/** GELU(x) = x·Φ(x), and its derivative Φ(x) + x·φ(x): one exp for both Φ and φ. */
const gelu = (x: number) => x * phi(x, Math.exp(-0.5 * x * x));
const geluGrad = (x: number) => {
  const gauss = Math.exp(-0.5 * x * x);
  return phi(x, gauss) + x * gauss * 0.3989422804014327;
};

function geluKernel({ inputs: { x } }: { inputs: { x: Info } }) {
  const y = alloc(x.shape), [X, Y] = [heap(x), heap(y)];
  for (let i = 0; i < X.length; i++) Y[i] = gelu(X[i]);
  return y;
}

function geluGradKernel({ inputs: { dy, x } }: { inputs: { dy: Info; x: Info } }) {
  const dx = alloc(x.shape), [DY, X, DX] = [heap(dy), heap(x), heap(dx)];
  for (let i = 0; i < X.length; i++) DX[i] = DY[i] * geluGrad(X[i]);
  return dx;
}

interface NormArgs {
  inputs: { x: Info; g: Info; b: Info; r?: Info; dy?: Info; stats?: Info };
  attrs: unknown;
}

/** y = (x - mean)·rstd·g + b (+ r), GELU if asked, per row of `rowSize`; stats: [rows, 2] of mean, rstd. */
function norm({ inputs: { x, g, b, r }, attrs }: NormArgs) {
  const { rowSize: n, gelu: withGelu } = attrs as { rowSize: number; gelu: boolean };
  const rows = size(x) / n, c = size(g);
  const y = alloc(x.shape), stats = alloc([rows, 2]);
  const [X, G, B, R, Y, S] = [heap(x), heap(g), heap(b), r ? heap(r) : null, heap(y), heap(stats)];
  for (let row = 0, start = 0; row < rows; row++, start += n) {
    let sum = 0, sq = 0;
    for (let k = start; k < start + n; k++) sum += X[k];
    const mean = sum / n;
    for (let k = start; k < start + n; k++) sq += (X[k] - mean) ** 2;
    const rstd = 1 / Math.sqrt(sq / n + 1e-5);
    [S[2 * row], S[2 * row + 1]] = [mean, rstd];
    for (let k = start, ch = start % c; k < start + n; k++, ch = ch + 1 === c ? 0 : ch + 1) {
      const v = (X[k] - mean) * rstd * G[ch] + B[ch] + (R ? R[k] : 0);
      Y[k] = withGelu ? gelu(v) : v;
    }
  }
  return [y, stats];
}

/** dx = rstd·(dxhat - mean(dxhat) - xhat·mean(dxhat·xhat)), dxhat = dy0·g; dg = Σ dy0·xhat, db = Σ dy0. */
function normGrad({ inputs: { dy, x, g, b, r, stats }, attrs }: NormArgs) {
  const { rowSize: n, gelu: withGelu } = attrs as { rowSize: number; gelu: boolean };
  const rows = size(x) / n, c = size(g);
  const [dx, dg, db] = [alloc(x.shape), alloc(g.shape), alloc(b.shape)], dr = r ? alloc(x.shape) : null;
  const [DY, X, G, B, R, S, DX] = [heap(dy!), heap(x), heap(g), heap(b), r ? heap(r) : null, heap(stats!), heap(dx)];
  const D0 = dr ? heap(dr) : DX; // dy0, the gradient before the GELU (and the residual's gradient)
  const [sumG, sumB] = [new Float64Array(c), new Float64Array(c)];
  for (let row = 0, start = 0; row < rows; row++, start += n) {
    const [mean, rstd] = [S[2 * row], S[2 * row + 1]];
    let s1 = 0, s2 = 0;
    for (let k = start, ch = start % c; k < start + n; k++, ch = ch + 1 === c ? 0 : ch + 1) {
      const xhat = (X[k] - mean) * rstd;
      const dy0 = withGelu ? DY[k] * geluGrad(xhat * G[ch] + B[ch] + (R ? R[k] : 0)) : DY[k];
      const dxhat = dy0 * G[ch];
      s1 += dxhat, s2 += dxhat * xhat, sumG[ch] += dy0 * xhat, sumB[ch] += dy0;
      D0[k] = dy0;
    }
    for (let k = start, ch = start % c; k < start + n; k++, ch = ch + 1 === c ? 0 : ch + 1) {
      DX[k] = rstd * (D0[k] * G[ch] - s1 / n - (X[k] - mean) * rstd * s2 / n);
    }
  }
  heap(dg).set(sumG);
  heap(db).set(sumB);
  return dr ? [dx, dg, db, dr] : [dx, dg, db];
}

// ------------------------------------------------------------------ AdamW and EMA

/** s + Σ_{e ≥ from} G[e]², in float32 from element to element (tfjs's Square, then its Sum). */
function sumOfSquares(G: Float32Array, from = 0, s = 0) {
  for (let e = from; e < G.length; e++) s = Math.fround(s + Math.fround(G[e] * G[e]));
  return s;
}

/** sumOfSquares of every gradient, four at a time (four independent chains of float32 additions run faster than one). */
export function sumsOfSquares(grads: Float32Array[]): number[] {
  const sums = grads.map(() => 0);
  const bySize = grads.map((_, i) => i).sort((i, j) => grads[j].length - grads[i].length); // like sizes side by side
  const none = new Float32Array(0);
  for (let k = 0; k < bySize.length; k += 4) {
    const four = [0, 1, 2, 3].map((j) => k + j < bySize.length ? grads[bySize[k + j]] : none);
    const [A, B, C, D] = four, shortest = D.length;
    let a = 0, b = 0, c = 0, d = 0;
    for (let e = 0; e < shortest; e++) {
      a = Math.fround(a + Math.fround(A[e] * A[e]));
      b = Math.fround(b + Math.fround(B[e] * B[e]));
      c = Math.fround(c + Math.fround(C[e] * C[e]));
      d = Math.fround(d + Math.fround(D[e] * D[e]));
    }
    [a, b, c, d].forEach((s, j) => {
      if (k + j < bySize.length) sums[bySize[k + j]] = sumOfSquares(four[j], shortest, s);
    });
  }
  return sums;
}

/**
 * min(1, maxNorm/(‖g‖ + 1e-6)), ‖g‖ the L2 norm of all the gradients, from each one's sum of squares (sumsOfSquares):
 * clipByGlobalNorm's float32 operations on this backend, in their order, so the scale is the very same float.
 */
export function clipScale(sums: number[], maxNorm: number) {
  const total = sums.reduce((t, s) => Math.fround(t + s), 0);
  const norm = Math.fround(Math.sqrt(total));
  return Math.min(1, Math.fround(Math.fround(maxNorm) / Math.fround(norm + Math.fround(1e-6))));
}

/**
 * AdamW for every weight, on the gradients clipped first if attrs.maxGradNorm (or the clip's scale, attrs.scale) is set
 * (each g·scale rounded to float32, as tfjs's mul): m and v in place; the weights new (XNNPACK caches packed weights by
 * tensor).
 */
function adamw({ inputs, attrs }: { inputs: Record<string, Info>; attrs: unknown }) {
  const s = attrs as AdamWStep;
  const count = Object.keys(inputs).length / 4;
  const outs = Array.from({ length: count }, (_, i) => alloc(inputs[`w${i}`].shape));
  const grads = outs.map((_, i) => heap(inputs[`g${i}`]));
  const scale = s.scale ?? (s.maxGradNorm ? clipScale(sumsOfSquares(grads), s.maxGradNorm) : 1);
  const { beta1, beta2, eps } = s, decay = 1 - s.lr * s.weightDecay, step = s.lr / s.c1, c2 = s.c2;
  outs.forEach((out, i) => {
    const [W, M, V, G, O] = [...["w", "m", "v", "g"].map((f) => heap(inputs[`${f}${i}`])), heap(out)];
    for (let e = 0; e < W.length; e++) {
      const g = scale === 1 ? G[e] : Math.fround(G[e] * scale); // (a branch: Math.fround is not free)
      const m = M[e] = beta1 * M[e] + (1 - beta1) * g, v = V[e] = beta2 * V[e] + (1 - beta2) * g * g;
      O[e] = W[e] * decay - step * m / (Math.sqrt(v / c2) + eps);
    }
  });
  return outs;
}

/** EMA for every weight: e ← β·e + (1-β)·w, as new tensors (as AdamW's weights). */
function ema({ inputs, attrs }: { inputs: Record<string, Info>; attrs: unknown }) {
  const { beta } = attrs as { beta: number };
  const count = Object.keys(inputs).length / 2;
  const outs = Array.from({ length: count }, (_, i) => alloc(inputs[`e${i}`].shape));
  outs.forEach((out, i) => {
    const [E, W, O] = [heap(inputs[`e${i}`]), heap(inputs[`w${i}`]), heap(out)];
    for (let k = 0; k < E.length; k++) O[k] = beta * E[k] + (1 - beta) * W[k];
  });
  return outs;
}

// ------------------------------------------------------------------ attention
// Per batch item and head, a block of query rows at a time: S = q·kᵀ/√d, P = softmax(S), o = P·v with the
// big [rows, n] matrix always the left operand (XNNPACK repacks the right one at every call). Native calls may
// grow the heap, which detaches every view of it: views are taken again after each.

/** Tunable: the most floats in a [rows, n] block of scores (about 4 M). */
export const attentionLimits = { blockFloats: 2 ** 22 };
const blockRows = (n: number) => Math.max(1, Math.min(n, Math.floor(attentionLimits.blockFloats / n)));

interface Dims {
  B: number;
  n: number;
  c: number;
  heads: number;
  d: number;
  scale: number;
  R: number;
}
function dims(qkv: Info, heads: number): Dims {
  const [B, n, c3] = qkv.shape, c = c3 / 3, d = c / heads;
  return { B, n, c, heads, d, scale: 1 / Math.sqrt(d), R: blockRows(n) };
}

/** dst[i, e] = src[at + i·width + e]·scale for i < rows, e < d (a head's columns of some token rows). */
function gather(src: Float32Array, at: number, width: number, dst: Float32Array, rows: number, d: number, scale = 1) {
  for (let i = 0; i < rows; i++) for (let e = 0; e < d; e++) dst[i * d + e] = src[at + i * width + e] * scale;
}
/** The reverse of gather: dst[at + i·width + e] = src[i, e]·scale. */
function scatter(src: Float32Array, dst: Float32Array, at: number, width: number, rows: number, d: number, scale = 1) {
  for (let i = 0; i < rows; i++) for (let e = 0; e < d; e++) dst[at + i * width + e] = src[i * d + e] * scale;
}
/** dst [cols, rows] = src [rows, cols]ᵀ, in 32 × 32 blocks. */
function transpose(src: Float32Array, dst: Float32Array, rows: number, cols: number) {
  for (let i0 = 0; i0 < rows; i0 += 32) {
    for (let j0 = 0; j0 < cols; j0 += 32) {
      for (let i = i0; i < Math.min(i0 + 32, rows); i++) {
        for (let j = j0; j < Math.min(j0 + 32, cols); j++) dst[j * rows + i] = src[i * cols + j];
      }
    }
  }
}

function attention({ inputs: { qkv }, attrs }: { inputs: { qkv: Info }; attrs: unknown }) {
  const a = dims(qkv, (attrs as { heads: number }).heads), { B, n, c, d, R } = a;
  const o = alloc([B, n, c]);
  const [q, kT, v, s, p, ob] = [[R, d], [d, n], [n, d], [R, n], [R, n], [R, d]].map((shape) => alloc(shape));
  const kRows = new Float32Array(n * d);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < a.heads; h++) {
      const at = (r: number, part: number) => (b * n + r) * 3 * c + part * c + h * d; // (b, token r, head h)
      gather(heap(qkv), at(0, 1), 3 * c, kRows, n, d);
      transpose(kRows, heap(kT), n, d);
      gather(heap(qkv), at(0, 2), 3 * c, heap(v), n, d);
      for (let r0 = 0; r0 < n; r0 += R) {
        const rows = Math.min(R, n - r0);
        gather(heap(qkv), at(r0, 0), 3 * c, heap(q), rows, d, a.scale);
        matMul2d(q, kT, s, rows, d, n);
        softmaxRows(s, p, rows, n);
        matMul2d(p, v, ob, rows, n, d);
        scatter(heap(ob), heap(o), (b * n + r0) * c + h * d, c, rows, d);
      }
    }
  }
  free(q, kT, v, s, p, ob);
  return [o, alloc([0])]; // nothing kept for the backward pass, which takes the softmax again
}

/** The backward pass: dS = P∘(dO·vᵀ - D), D_i = dO_i·O_i; dq = dS·k/√d, dk = dSᵀ·q/√d, dv = Pᵀ·dO. */
function attentionGrad(
  { inputs: { dy, qkv, o }, attrs }: { inputs: { dy: Info; qkv: Info; o: Info }; attrs: unknown },
) {
  const a = dims(qkv, (attrs as { heads: number }).heads), { B, n, c, d, R } = a;
  const dqkv = alloc(qkv.shape);
  const shapes = [[n, d], [n, d], [d, n], [d, n], [R, d], [R, d], [R, n], [R, n], [R, n], [n, R], [n, R], [n, d], [
    R,
    d,
  ]];
  const [k, v, kT, vT, q, g, s, p, ds, pT, dsT, tmp, dqb] = shapes.map((shape) => alloc(shape));
  const dRows = new Float64Array(R);
  const [dk, dv, rowsT, oRows] = [
    new Float32Array(n * d),
    new Float32Array(n * d),
    new Float32Array(n * d),
    new Float32Array(R * d),
  ];
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < a.heads; h++) {
      const at = (r: number, part: number) => (b * n + r) * 3 * c + part * c + h * d;
      const atO = (r: number) => (b * n + r) * c + h * d; // in o and dy
      for (const [part, rows, rowsOfT] of [[1, k, kT], [2, v, vT]] as const) {
        gather(heap(qkv), at(0, part), 3 * c, rowsT, n, d);
        heap(rows).set(rowsT);
        transpose(rowsT, heap(rowsOfT), n, d);
      }
      dk.fill(0), dv.fill(0);
      for (let r0 = 0; r0 < n; r0 += R) {
        const rows = Math.min(R, n - r0);
        gather(heap(qkv), at(r0, 0), 3 * c, heap(q), rows, d, a.scale);
        gather(heap(dy), atO(r0), c, heap(g), rows, d);
        gather(heap(o), atO(r0), c, oRows, rows, d);
        matMul2d(q, kT, s, rows, d, n);
        softmaxRows(s, p, rows, n);
        matMul2d(g, vT, ds, rows, d, n); // dP = dO·vᵀ, made dS in place
        const [P, DS, G, PT, DST] = [heap(p), heap(ds), heap(g), heap(pT), heap(dsT)];
        for (let i = 0; i < rows; i++) {
          let D = 0;
          for (let e = 0; e < d; e++) D += G[i * d + e] * oRows[i * d + e];
          dRows[i] = D;
        }
        if (sgemm) { // dS = P∘(dP - D) in place; dv += Pᵀ·dO and dk += dSᵀ·q by sgemm's flags, with no Pᵀ, dSᵀ made
          for (let i = 0, at = 0; i < rows; i++) {
            for (let j = 0; j < n; j++, at++) DS[at] = P[at] * (DS[at] - dRows[i]);
          }
          sgemm(true, false, n, d, rows, P, n, G, d, 1, dv, d);
          sgemm(true, false, n, d, rows, DS, n, heap(q), d, 1, dk, d);
          matMul2d(ds, k, dqb, rows, n, d);
          scatter(heap(dqb), heap(dqkv), at(r0, 0), 3 * c, rows, d, a.scale);
          continue;
        }
        for (let i0 = 0; i0 < rows; i0 += 32) { // dS = P∘(dP - D), and Pᵀ and dSᵀ, in 32 × 32 blocks
          for (let j0 = 0; j0 < n; j0 += 32) {
            for (let i = i0; i < Math.min(i0 + 32, rows); i++) {
              for (let j = j0, at = i * n + j0; j < Math.min(j0 + 32, n); j++, at++) {
                const pij = P[at], sij = pij * (DS[at] - dRows[i]);
                DS[at] = sij, PT[j * rows + i] = pij, DST[j * rows + i] = sij;
              }
            }
          }
        }
        matMul2d(ds, k, dqb, rows, n, d);
        scatter(heap(dqb), heap(dqkv), at(r0, 0), 3 * c, rows, d, a.scale);
        for (const [mT, right, acc] of [[pT, g, dv], [dsT, q, dk]] as const) { // acc += m·right, m = Pᵀ or dSᵀ
          matMul2d(mT, right, tmp, n, rows, d);
          const TMP = heap(tmp);
          for (let e = 0; e < n * d; e++) acc[e] += TMP[e];
        }
      }
      scatter(dk, heap(dqkv), at(0, 1), 3 * c, n, d);
      scatter(dv, heap(dqkv), at(0, 2), 3 * c, n, d);
    }
  }
  free(k, v, kT, vT, q, g, s, p, ds, pT, dsT, tmp, dqb);
  return dqkv;
}

const KERNELS: FusedKernels = {
  norm,
  normGrad,
  gelu: geluKernel,
  geluGrad: geluGradKernel,
  attention,
  attentionGrad,
  adamw,
  clippedAdamw: adamw,
  ema,
};

/** Registers the fused kernels for the wasm backend. */
export function registerWasmFused() {
  for (const config of fusedKernelConfigs("wasm", KERNELS, (f) => onBackend(f as never))) {
    if (!tf.getKernel(config.kernelName, "wasm")) tf.registerKernel(config);
  }
}
