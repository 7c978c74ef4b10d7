// Kernels registered for the tfjs wasm backend, the one it lacks (Conv2DBackpropFilter) and replacements for the ones
// that are slow as shipped.
// - BatchMatMul: only a single product without transpose flags reaches XNNPACK; everything else (batches,
//   and the transpose flags of every matMul gradient) runs a naive loop, 10-35x slower. Here transposes are
//   materialised and batches run as single XNNPACK products on views into the heap.
// - Conv2DBackpropInput (slow): a conv2d of dy with the spatially flipped, channel-swapped filter.
// - Conv2DBackpropFilter (missing): an im2col matrix (built in JS) times dy, as one XNNPACK product.
// - Slice (copies its whole input out of the heap, and rank > 4 runs element by element): block copies.
// - Identity (a copy): shares the data.
// They work on TensorInfos with the backend's own memory, so no tensor data leaves the wasm heap.
// Where a CBLAS loads (native.ts), every product is its sgemm on the heap in place, transposes given as flags, and the
// three convolution kernels are sums of shifted products (nativeConv2D and its gradients): no XNNPACK, no im2col.
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { loadBlas, sgemm } from "./native.ts";

type Info = tf.TensorInfo;
type Heap = Float32Array | Int32Array | Uint8Array;
interface Wasm {
  wasm: {
    cwrap: (name: string, ret: null, args: string[]) => (...args: unknown[]) => void;
    tfjs: { disposeData: (id: number) => void };
  };
  dataIdMap: { get: (d: object) => { id: number; memoryOffset: number }; delete: (d: object) => void };
  makeOutput: (shape: number[], dtype: tf.DataType, memoryOffset?: number) => Info;
  typedArrayFromHeap: (t: Info) => Heap;
  disposeData: (d: object) => void;
  incRef: (d: object) => void;
}
interface Conv2DAttrs {
  strides: number | [number, number];
  pad: "same" | "valid" | number | number[][];
  dataFormat: "NHWC" | "NCHW";
  dimRoundingMode?: "floor" | "round" | "ceil";
  inputShape: [number, number, number, number];
  filterShape: [number, number, number, number];
}

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const original = new Map<string, tf.KernelFunc>(); // the shipped wasm kernels, for the cases not replaced
let be: Wasm; // the wasm backend of the kernel call being run
let bmm: (...args: unknown[]) => void; // its C++ BatchMatMul: a_id, a_shape, rank, b_id, b_shape, rank, tA, tB, out_id
let softmax: (x: number, out: number, channels: number, batch: number) => void; // its C++ (XNNPACK) Softmax
let bmmOf: Wasm | null = null;

/** Runs a replacement kernel with `be` (and `bmm`) set to the backend of the call. */
export const onBackend = (f: (args: never) => Info | Info[]): tf.KernelFunc => (args) => {
  be = args.backend as unknown as Wasm;
  if (bmmOf !== be) {
    const n = "number";
    bmm = be.wasm.cwrap("BatchMatMul", null, [n, "array", n, n, "array", n, n, n, n]);
    softmax = be.wasm.cwrap("Softmax", null, [n, n, n, n]);
    bmmOf = be;
  }
  return f(args as never);
};

export const alloc = (shape: number[], dtype: tf.DataType = "float32") => be.makeOutput(shape, dtype);
export const heap = (t: Info) => be.typedArrayFromHeap(t) as Float32Array;
export const free = (...ts: Info[]) => ts.forEach((t) => be.disposeData(t.dataId));
const shippedKernel = (name: string, inputs: Record<string, Info>, attrs: object) =>
  original.get(name)!({ inputs, attrs: attrs as tf.NamedAttrMap, backend: be as unknown as tf.KernelBackend }) as Info;

/** A tensor that aliases `shape`-many floats of `t`, starting at element `offset` (free it with dropView). */
export const view = (t: Info, offset: number, shape: number[]) =>
  be.makeOutput(shape, t.dtype, be.dataIdMap.get(t.dataId).memoryOffset + 4 * offset);
export const dropView = (v: Info) => { // unregister without freeing: the memory belongs to the viewed tensor
  be.wasm.tfjs.disposeData(be.dataIdMap.get(v.dataId).id);
  be.dataIdMap.delete(v.dataId);
};
const shapeBytes = (s: number[]) => new Uint8Array(new Int32Array(s).buffer);

/** out[m, n] = a[m, k]·b[k, n] with XNNPACK, all three given as tensors (views allowed) and shapes. */
const id = (t: Info) => be.dataIdMap.get(t.dataId).id;
export function matMul2d(a: Info, b: Info, out: Info, m: number, k: number, n: number) {
  if (sgemm) return sgemm(false, false, m, n, k, heap(a), k, heap(b), n, 0, heap(out), n);
  // XNNPACK keeps b packed under b's tensor id and would reuse it after b's data changed: a fresh id every time.
  const fresh = view(b, 0, [k, n]);
  bmm(id(a), shapeBytes([1, m, k]), 3, id(fresh), shapeBytes([1, k, n]), 3, false, false, id(out));
  dropView(fresh);
}

/** out[r, :] = softmax(x[r, :]) for `rows` rows of `cols` (views allowed), by XNNPACK. */
export const softmaxRows = (x: Info, out: Info, rows: number, cols: number) => softmax(id(x), id(out), cols, rows);

/** [batch, r, c] -> [batch, c, r] by the shipped (native) Transpose. */
const transpose3d = (t: Info, [batch, r, c]: number[]) =>
  shippedKernel("Transpose", { x: { ...t, shape: [batch, r, c] } }, { perm: [0, 2, 1] });

/** [batch, m, n] = op(a)·op(b) for a, b of `batchA`, `batchB` (1 or batch) matrices: transposes made real. */
function products(a: Info, b: Info, tA: boolean, tB: boolean, batchA: number, batchB: number, [m, k, n]: number[]) {
  if (sgemm) return sgemmProducts(a, b, tA, tB, batchA, batchB, [m, k, n]);
  const at = tA ? transpose3d(a, [batchA, k, m]) : a; // [batchA, m, k]
  const bt = tB ? transpose3d(b, [batchB, n, k]) : b; // [batchB, k, n]
  const batch = Math.max(batchA, batchB);
  const out = alloc([batch, m, n]);
  if (batchB === 1) {
    matMul2d(at, bt, out, batchA * m, k, n); // one product, with the batches of a stacked as rows
  } else {
    for (let i = 0; i < batch; i++) {
      const ai = view(at, batchA === 1 ? 0 : i * m * k, [m, k]);
      const bi = view(bt, i * k * n, [k, n]);
      const oi = view(out, i * m * n, [m, n]);
      matMul2d(ai, bi, oi, m, k, n);
      [ai, bi, oi].forEach(dropView);
    }
  }
  if (at !== a) free(at);
  if (bt !== b) free(bt);
  return out;
}

/** products() by sgemm, one call a matrix, its transposes as flags. */
function sgemmProducts(
  a: Info,
  b: Info,
  tA: boolean,
  tB: boolean,
  batchA: number,
  batchB: number,
  [m, k, n]: number[],
) {
  const batch = Math.max(batchA, batchB);
  const out = alloc([batch, m, n]);
  const [A, B, C] = [heap(a), heap(b), heap(out)];
  for (let i = 0; i < batch; i++) {
    const ai = A.subarray((batchA === 1 ? 0 : i) * m * k), bi = B.subarray((batchB === 1 ? 0 : i) * k * n);
    sgemm!(tA, tB, m, n, k, ai, tA ? m : k, bi, tB ? k : n, 0, C.subarray(i * m * n), n);
  }
  return out;
}

/** XNNPACK repacks the right operand of every product: about 0.4 of a transpose of it (measured). */
const PACK = 0.4;

function batchMatMul({ inputs, attrs }: { inputs: { a: Info; b: Info }; attrs: tf.NamedAttrMap }): Info {
  const { a, b } = inputs;
  const { transposeA: tA, transposeB: tB } = attrs as { transposeA: boolean; transposeB: boolean };
  const [ra, rb] = [a.shape.length, b.shape.length];
  const [m, k] = tA ? [a.shape[ra - 1], a.shape[ra - 2]] : [a.shape[ra - 2], a.shape[ra - 1]];
  const n = tB ? b.shape[rb - 2] : b.shape[rb - 1];
  const [batchA, batchB] = [size(a.shape.slice(0, -2)), size(b.shape.slice(0, -2))];
  const outer = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const batch = size(outer);
  if (a.dtype !== "float32" || (batchA !== batchB && batchA !== 1 && batchB !== 1)) {
    return shippedKernel("BatchMatMul", inputs, attrs);
  }
  // Elements moved: by the transposes the flags ask for and by packing b; or, for (op(b)ᵀ·op(a)ᵀ)ᵀ, by the
  // transposes of the operands without a flag, by packing a, and by transposing the result.
  const [sa, sb] = [a.shape.reduce((x, y) => x * y, 1), b.shape.reduce((x, y) => x * y, 1)];
  const direct = (tA ? sa : 0) + (tB ? sb : 0) + PACK * sb;
  const swapped = (tA ? 0 : sa) + (tB ? 0 : sb) + PACK * sa + batch * m * n;
  let out: Info;
  if (sgemm || direct <= swapped || batchA !== batchB) {
    out = products(a, b, tA, tB, batchA, batchB, [m, k, n]);
  } else {
    const outT = products(b, a, !tB, !tA, batchB, batchA, [n, k, m]);
    out = transpose3d(outT, [batch, n, m]);
    free(outT);
  }
  return { ...out, shape: [...outer, m, n] };
}

/** Padding (top, left) and output size of a stride-1 NHWC conv with this filter size, as the forward pass used it. */
function convPadding(a: Conv2DAttrs): [number, number, number, number] | null {
  const strides = typeof a.strides === "number" ? [a.strides, a.strides] : a.strides;
  if (strides[0] !== 1 || strides[1] !== 1 || a.dataFormat !== "NHWC") return null;
  const info = tf.backend_util.computeConv2DInfo(
    a.inputShape,
    a.filterShape,
    1,
    1,
    a.pad as "same",
    a.dimRoundingMode,
    false,
    "channelsLast",
  );
  return [info.padInfo.top, info.padInfo.left, info.outHeight, info.outWidth];
}

/** Conv2D: by sgemm where it loaded (stride 1, no dilation, NHWC), else the shipped (XNNPACK) kernel. */
function conv2d({ inputs, attrs }: { inputs: { x: Info; filter: Info }; attrs: tf.NamedAttrMap }): Info {
  const a = attrs as unknown as Conv2DAttrs & { dilations?: number | [number, number] };
  const { x, filter } = inputs;
  const dilated = [a.dilations ?? 1].flat().some((d) => d !== 1);
  const shapes = { inputShape: x.shape, filterShape: filter.shape } as Pick<Conv2DAttrs, "inputShape" | "filterShape">;
  const pad = sgemm && !dilated && convPadding({ ...a, ...shapes });
  if (!pad) return shippedKernel("Conv2D", inputs, attrs);
  return nativeConv2D(x, filter, pad);
}

// A stride-1 conv as kh·kw products. With x zero-padded to [n, hp, wp, ci] and seen as rows p = (n, y, x) of ci,
// the output at p (in the padded grid: rows whose y, x are past ho, wo are dropped) is Σ_{i,j} xp[p + i·wp + j]·W[i, j]:
// each (i, j) is one sgemm of all rows at once, its input rows a shifted view of xp.

/** x [n, h, w, c] zero-padded into the grid [n, hp, wp, c] at (top, left); x itself where there is no padding. */
function padded(x: Info, hp: number, wp: number, top: number, left: number): Info {
  const [nb, h, w, c] = x.shape;
  if (hp === h && wp === w) return x;
  const xp = alloc([nb, hp, wp, c]);
  const [src, dst] = [heap(x), heap(xp)];
  dst.fill(0);
  for (let n = 0; n < nb; n++) {
    for (let y = 0; y < h; y++) {
      const from = ((n * h + y) * w) * c;
      dst.set(src.subarray(from, from + w * c), ((n * hp + y + top) * wp + left) * c);
    }
  }
  return xp;
}

/** The [n, ho, wo, c] window at (top, left) of a grid [n, hp, wp, c]; the grid itself when they are the same. */
function window(grid: Info, [nb, hp, wp, c]: number[], ho: number, wo: number, top: number, left: number): Info {
  if (ho === hp && wo === wp) return { ...grid, shape: [nb, ho, wo, c] };
  const out = alloc([nb, ho, wo, c]);
  const [src, dst] = [heap(grid), heap(out)];
  for (let n = 0; n < nb; n++) {
    for (let y = 0; y < ho; y++) {
      const from = ((n * hp + y + top) * wp + left) * c;
      dst.set(src.subarray(from, from + wo * c), ((n * ho + y) * wo) * c);
    }
  }
  free(grid);
  return out;
}

/** y = conv(x, W), stride 1: Σ over the filter's (i, j) of shifted-row products (the comment above). */
function nativeConv2D(x: Info, filter: Info, [top, left, ho, wo]: number[]): Info {
  const [nb, , , ci] = x.shape;
  const [kh, kw, , co] = filter.shape;
  const [hp, wp] = [ho + kh - 1, wo + kw - 1];
  const xp = padded(x, hp, wp, top, left);
  const rows = nb * hp * wp - ((kh - 1) * wp + kw - 1); // the rows p whose shifted reads stay inside xp
  const yp = alloc([nb, hp, wp, co]);
  const [X, W, Y] = [heap(xp), heap(filter), heap(yp)];
  Y.fill(0, rows * co);
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const wij = W.subarray((i * kw + j) * ci * co);
      sgemm!(false, false, rows, co, ci, X.subarray((i * wp + j) * ci), ci, wij, co, i + j ? 1 : 0, Y, co);
    }
  }
  if (xp !== x) free(xp);
  return window(yp, [nb, hp, wp, co], ho, wo, 0, 0);
}

/** dy [n, ho, wo, co] placed in the output's padded grid [n, hp, wp, co] (zeros past ho, wo). */
const dyGrid = (dy: Info, hp: number, wp: number) => padded(dy, hp, wp, 0, 0);

/** dL/dx of nativeConv2D: dxp[p + i·wp + j] += dy[p]·W[i, j]ᵀ, then the window of x in the padded grid. */
function nativeBackpropInput(dy: Info, filter: Info, [nb, h, w]: number[], [top, left]: number[]): Info {
  const [kh, kw, ci, co] = filter.shape;
  const [, ho, wo] = dy.shape;
  const [hp, wp] = [ho + kh - 1, wo + kw - 1];
  const dyp = dyGrid(dy, hp, wp);
  const rows = nb * hp * wp - ((kh - 1) * wp + kw - 1);
  const dxp = alloc([nb, hp, wp, ci]);
  const [D, W, X] = [heap(dyp), heap(filter), heap(dxp)];
  X.fill(0);
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const wij = W.subarray((i * kw + j) * ci * co);
      sgemm!(false, true, rows, ci, co, D, co, wij, co, 1, X.subarray((i * wp + j) * ci), ci);
    }
  }
  if (dyp !== dy) free(dyp);
  return window(dxp, [nb, hp, wp, ci], h, w, top, left);
}

/** dL/dW of nativeConv2D: dW[i, j] = Σ_p xp[p + i·wp + j]ᵀ·dy[p], one sgemm per (i, j). */
function nativeBackpropFilter(x: Info, dy: Info, [kh, kw, ci, co]: number[], [top, left]: number[]): Info {
  const [nb] = x.shape;
  const [, ho, wo] = dy.shape;
  const [hp, wp] = [ho + kh - 1, wo + kw - 1];
  const xp = padded(x, hp, wp, top, left);
  const dyp = dyGrid(dy, hp, wp);
  const rows = nb * hp * wp - ((kh - 1) * wp + kw - 1);
  const dW = alloc([kh, kw, ci, co]);
  const [X, D, G] = [heap(xp), heap(dyp), heap(dW)];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const gij = G.subarray((i * kw + j) * ci * co);
      sgemm!(true, false, ci, co, rows, X.subarray((i * wp + j) * ci), ci, D, co, 0, gij, co);
    }
  }
  free(...[xp, dyp].filter((t) => t !== x && t !== dy));
  return dW;
}

/**
 * dL/dx of a stride-1 NHWC conv. Two ways, whichever moves fewer elements: conv2d(dy, W flipped in h and w,
 * in/out channels swapped), which transposes and repacks all of W (dear for big filters on small images); or
 * cols = W·dyᵀ ([kh·kw·ci, co]·[co, n·ho·wo], W as it is) folded back onto the image (col2im).
 */
function conv2dBackpropInput({ inputs, attrs }: { inputs: { dy: Info; filter: Info }; attrs: tf.NamedAttrMap }) {
  const a = attrs as unknown as Conv2DAttrs;
  const { dy, filter } = inputs;
  const pad = convPadding({ ...a, filterShape: filter.shape as Conv2DAttrs["filterShape"] });
  if (!pad) return shippedKernel("Conv2DBackpropInput", inputs, attrs);
  if (sgemm) return nativeBackpropInput(dy, filter, a.inputShape, pad);
  const [kh, kw, ci, co] = filter.shape;
  const [nb, h, w] = a.inputShape;
  const [, ho, wo] = dy.shape;
  const len = nb * ho * wo;
  const viaConv = (1 + PACK) * size(filter.shape);
  const viaCols = (1 + PACK) * len * co + 0.3 * kh * kw * ci * len + nb * h * w * ci;
  if (viaCols < viaConv && kh * kw * ci * len <= limits.colsFloats) {
    return col2imBackpropInput(dy, filter, a.inputShape, [pad[0], pad[1]]);
  }
  const swapped = shippedKernel("Transpose", { x: filter }, { perm: [0, 1, 3, 2] }); // [kh, kw, co, ci]
  const flipped = alloc([kh, kw, co, ci]);
  const [src, dst, block] = [heap(swapped), heap(flipped), co * ci];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const from = ((kh - 1 - i) * kw + (kw - 1 - j)) * block;
      dst.set(src.subarray(from, from + block), (i * kw + j) * block);
    }
  }
  free(swapped);
  // Padding that maps the [ho, wo] grid of dy back onto the [h, w] grid of x.
  const [top, left] = [kh - 1 - pad[0], kw - 1 - pad[1]];
  const explicit = [[0, 0], [top, h - ho - top + kh - 1], [left, w - wo - left + kw - 1], [0, 0]];
  const dx = shippedKernel("Conv2D", { x: dy, filter: flipped }, {
    strides: 1,
    pad: explicit,
    dataFormat: "NHWC",
    dilations: 1,
  });
  free(flipped);
  return dx;
}

/** dx[n, y, x, c] = Σ_{i,j} cols[(i, j, c), (n, y - i + top, x - j + left)], cols = W·dyᵀ. */
function col2imBackpropInput(dy: Info, filter: Info, [nb, h, w]: number[], [top, left]: [number, number]) {
  const [kh, kw, ci, co] = filter.shape;
  const [, ho, wo] = dy.shape;
  const len = nb * ho * wo;
  const dyT = shippedKernel("Transpose", { x: dy }, { perm: [3, 0, 1, 2] }); // [co, n, ho, wo]
  const cols = alloc([kh * kw * ci, len]);
  matMul2d(filter, dyT, cols, kh * kw * ci, co, len);
  free(dyT);
  const dxT = alloc([ci, nb, h, w]);
  const [src, dst] = [heap(cols), heap(dxT)];
  dst.fill(0);
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const sx = j - left; // x = xo + sx
      const x0 = Math.max(0, -sx), x1 = Math.min(wo, w - sx); // the xo that land inside [0, w)
      for (let c = 0; c < ci; c++) {
        let o = ((i * kw + j) * ci + c) * len;
        for (let n = 0; n < nb; n++) {
          for (let yo = 0; yo < ho; yo++, o += wo) {
            const y = yo + i - top;
            if (y < 0 || y >= h) continue;
            const d = ((c * nb + n) * h + y) * w + sx;
            for (let xo = x0; xo < x1; xo++) dst[d + xo] += src[o + xo];
          }
        }
      }
    }
  }
  free(cols);
  const dx = shippedKernel("Transpose", { x: dxT }, { perm: [1, 2, 3, 0] });
  free(dxT);
  return dx;
}

/** Tunables: the most floats of im2col matrix held at once (big batches are done in parts). */
export const limits = { colsFloats: 2 ** 25 };

/**
 * dL/dW of a stride-1 NHWC conv: dW[(i, j, c), o] = Σ_{n,y,x} x[n, y+i-top, x+j-left, c]·dy[n, y, x, o],
 * i.e. colsᵀ·dy with colsᵀ[(i, j, c), (n, y, x)] built from x transposed to [c, n, y, x].
 */
function conv2dBackpropFilter({ inputs, attrs }: { inputs: { x: Info; dy: Info }; attrs: tf.NamedAttrMap }) {
  const a = attrs as unknown as Conv2DAttrs;
  const pad = convPadding({ ...a, inputShape: inputs.x.shape as Conv2DAttrs["inputShape"] });
  if (!pad) throw new Error("wasm Conv2DBackpropFilter supports stride-1 NHWC convolutions only");
  if (sgemm) return nativeBackpropFilter(inputs.x, inputs.dy, a.filterShape, pad);
  const [kh, kw, ci, co] = a.filterShape;
  const [nb, h, w] = inputs.x.shape;
  const [, ho, wo] = inputs.dy.shape;
  const xt = shippedKernel("Transpose", { x: inputs.x }, { perm: [3, 0, 1, 2] }); // [ci, n, h, w]
  const rows = kh * kw * ci;
  const chunk = Math.max(1, Math.min(nb, Math.floor(limits.colsFloats / (rows * ho * wo)))); // images per product
  const cols = alloc([rows, chunk * ho * wo]);
  const dW = alloc([kh, kw, ci, co]);
  const part = chunk < nb ? alloc([rows, co]) : dW;
  for (let n0 = 0; n0 < nb; n0 += chunk) {
    const cn = Math.min(chunk, nb - n0), len = cn * ho * wo;
    const [src, dst] = [heap(xt), heap(cols)];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        // Output columns x in [x0, x1) read input columns x + dx, inside [0, w).
        const sy = i - pad[0], sx = j - pad[1];
        const x0 = Math.max(0, -sx), x1 = Math.min(wo, w - sx);
        for (let c = 0; c < ci; c++) {
          let o = ((i * kw + j) * ci + c) * len;
          if (ho === h && wo === w) { // 'same': the cn planes of channel c as one shifted copy, then the pixels
            const base = (c * nb + n0) * h * w, shift = sy * w + sx; //       that came from outside their plane zeroed
            const lo = Math.max(0, -shift - base), hi = Math.min(len, src.length - base - shift);
            dst.fill(0, o, o + lo);
            if (hi > lo) dst.set(src.subarray(base + lo + shift, base + hi + shift), o + lo);
            dst.fill(0, o + Math.max(lo, hi), o + len);
            for (let q = o; q < o + len; q += h * w) {
              for (let y = 0; y < h; y++) {
                if (y + sy < 0 || y + sy >= h) { for (let xx = 0; xx < w; xx++) dst[q + y * w + xx] = 0; }
                else {
                  for (let xx = 0; xx < x0; xx++) dst[q + y * w + xx] = 0;
                  for (let xx = x1; xx < w; xx++) dst[q + y * w + xx] = 0;
                }
              }
            }
            continue;
          }
          for (let n = n0; n < n0 + cn; n++) {
            for (let y = 0; y < ho; y++, o += wo) {
              const yy = y + sy;
              if (yy < 0 || yy >= h || x1 <= x0) {
                dst.fill(0, o, o + wo);
                continue;
              }
              const s = ((c * nb + n) * h + yy) * w + sx;
              if (x0 > 0) dst.fill(0, o, o + x0);
              dst.set(src.subarray(s + x0, s + x1), o + x0);
              if (x1 < wo) dst.fill(0, o + x1, o + wo);
            }
          }
        }
      }
    }
    const colsView = view(cols, 0, [rows, len]), dyView = view(inputs.dy, n0 * ho * wo * co, [len, co]);
    matMul2d(colsView, dyView, part, rows, len, co);
    [colsView, dyView].forEach(dropView);
    if (part !== dW) {
      const [acc, p] = [heap(dW), heap(part)];
      if (n0 === 0) acc.set(p);
      else for (let e = 0; e < acc.length; e++) acc[e] += p[e];
    }
  }
  free(xt, cols, ...(part !== dW ? [part] : []));
  return dW;
}

/** Slice as block copies inside the heap: the trailing full axes and the last partial one make one run. */
function slice({ inputs, attrs }: { inputs: { x: Info }; attrs: tf.NamedAttrMap }): Info {
  const { x } = inputs;
  if (x.dtype === "string") return shippedKernel("Slice", inputs, attrs);
  const [begin, sz] = tf.slice_util.parseSliceParams(x as tf.Tensor, attrs.begin as number[], attrs.size as number[]);
  const out = alloc(sz, x.dtype);
  if (size(sz) === 0) return out;
  const rank = x.shape.length;
  const strides = [...x.shape.keys()].map((d) => size(x.shape.slice(d + 1)));
  let d = rank - 1;
  while (d > 0 && sz[d] === x.shape[d]) d--; // axes after d are copied whole
  const run = sz[d] * strides[d];
  const [src, dst] = [heap(x), heap(out)];
  const idx = new Array(d).fill(0); // position among the outer axes [0, d)
  for (let o = 0; o < dst.length; o += run) {
    let s = begin[d] * strides[d];
    for (let e = 0; e < d; e++) s += (begin[e] + idx[e]) * strides[e];
    dst.set(src.subarray(s, s + run), o);
    for (let e = d - 1; e >= 0 && ++idx[e] === sz[e]; e--) idx[e] = 0;
  }
  return out;
}

/** Identity shares the data (as Reshape does) instead of copying it: tfjs clones every tensor it saves for
 * the backward pass, so a copying Identity doubles the memory of the saved activations. */
function identity({ inputs }: { inputs: { x: Info } }): Info {
  const { x } = inputs;
  if (x.dtype === "string") return shippedKernel("Identity", inputs, {});
  be.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/** MaxPoolGrad: dy goes to the first maximum of each window (the shipped kernel drops it when all are negative). */
function maxPoolGrad({ inputs: { dy, input }, attrs }: { inputs: { dy: Info; input: Info }; attrs: tf.NamedAttrMap }) {
  const a = attrs as { filterSize: [number, number]; strides: [number, number]; pad: "valid" | "same" | number };
  const info = tf.backend_util.computePool2DInfo(
    input.shape as [number, number, number, number],
    a.filterSize,
    a.strides,
    1,
    a.pad,
  );
  const { inHeight: h, inWidth: w, inChannels: c, outHeight: ho, outWidth: wo, padInfo } = info;
  const dx = alloc(input.shape);
  const [DY, X, DX] = [heap(dy), heap(input), heap(dx)];
  DX.fill(0);
  for (let n = 0, o = 0; n < info.batchSize; n++) {
    for (let oy = 0; oy < ho; oy++) {
      for (let ox = 0; ox < wo; ox++) {
        for (let ch = 0; ch < c; ch++, o++) {
          let best = -1;
          for (let fy = 0; fy < info.filterHeight; fy++) {
            const y = oy * info.strideHeight - padInfo.top + fy;
            for (let fx = 0; fx < info.filterWidth && y >= 0 && y < h; fx++) {
              const x = ox * info.strideWidth - padInfo.left + fx, at = ((n * h + y) * w + x) * c + ch;
              if (x >= 0 && x < w && (best < 0 || X[at] > X[best])) best = at;
            }
          }
          if (best >= 0) DX[best] += DY[o];
        }
      }
    }
  }
  return dx;
}

const replacements: [string, (args: never) => Info][] = [
  ["Conv2D", conv2d],
  ["MaxPoolGrad", maxPoolGrad],
  ["Identity", identity],
  ["BatchMatMul", batchMatMul],
  ["Conv2DBackpropInput", conv2dBackpropInput],
  ["Conv2DBackpropFilter", conv2dBackpropFilter],
  ["Slice", slice],
];

/** Registers the kernels above for the wasm backend and makes it the current backend. */
export async function registerWasmKernels() {
  loadBlas();
  await tf.setBackend("wasm");
  if (original.size) return;
  for (const [name, kernelFunc] of replacements) {
    const shipped = tf.getKernel(name, "wasm");
    if (shipped) {
      original.set(name, shipped.kernelFunc);
      tf.unregisterKernel(name, "wasm");
    }
    tf.registerKernel({ kernelName: name, backendName: "wasm", kernelFunc: onBackend(kernelFunc) });
  }
  original.set("Transpose", tf.getKernel("Transpose", "wasm")!.kernelFunc);
}
