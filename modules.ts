// The tutorial's U-Net, NHWC throughout: DoubleConv, Down, Up, SelfAttention, UNet, UNetConditional.
import * as tf from "@tensorflow/tfjs";
import { nextSeed } from "./backend.ts";
import { fusedAttention, fusedGelu, fusedNorm, hasFused } from "./fused.ts";

type T4 = tf.Tensor4D;
type T2 = tf.Tensor2D;

/** A layer's weights by PyTorch-style name ("down.0.net.1.conv1.weight"), children's included. */
export class Module {
  readonly weights = new Map<string, tf.Variable>();

  protected param(name: string, init: tf.Tensor): tf.Variable {
    const v = tf.variable(init);
    init.dispose();
    this.weights.set(name, v);
    return v;
  }

  protected child<M extends Module>(name: string, m: M): M {
    for (const [k, v] of m.weights) this.weights.set(`${name}.${k}`, v);
    return m;
  }

  get parameterCount(): number {
    return [...this.weights.values()].reduce((n, v) => n + v.size, 0);
  }

  dispose() {
    for (const v of this.weights.values()) v.dispose();
  }
}

/** PyTorch's default init for Conv2d and Linear: U(-1/sqrt(fanIn), 1/sqrt(fanIn)). */
const uniform = (shape: number[], fanIn: number) =>
  tf.randomUniform(shape, -1 / Math.sqrt(fanIn), 1 / Math.sqrt(fanIn), "float32", nextSeed());

export class Linear extends Module {
  w: tf.Variable;
  b: tf.Variable;
  constructor(cin: number, cout: number) {
    super();
    this.w = this.param("weight", uniform([cin, cout], cin));
    this.b = this.param("bias", uniform([cout], cin));
  }
  forward(x: tf.Tensor): tf.Tensor {
    const flat = x.reshape([-1, x.shape.at(-1)!]) as T2;
    return tf.fused.matMul({ a: flat, b: this.w as T2, bias: this.b }).reshape([...x.shape.slice(0, -1), -1]);
  }
}

/**
 * Normalization over the last `axes` with a per-channel affine: GroupNorm(1, c) and LayerNorm(c). `residual` is added
 * after the affine and `gelu` applied last, so that a DoubleConv's norm, residual and GELU are one fused kernel.
 */
export class Norm extends Module {
  g: tf.Variable;
  b: tf.Variable;
  constructor(c: number, readonly axes: number[]) {
    super();
    this.g = this.param("weight", tf.ones([c]));
    this.b = this.param("bias", tf.zeros([c]));
  }
  forward<X extends tf.Tensor>(x: X, { residual = null, gelu: withGelu = false }: NormOptions = {}): X {
    const rowSize = this.axes.reduce((n, a) => n * x.shape.at(a)!, 1);
    if (hasFused("norm")) return fusedNorm(x, this.g, this.b, { rowSize, residual, gelu: withGelu }) as X;
    const rows = x.reshape([-1, rowSize]);
    const { mean, variance } = tf.moments(rows, 1, true);
    let y = rows.sub(mean).mul(tf.rsqrt(variance.add(1e-5))).reshape(x.shape).mul(this.g).add(this.b);
    if (residual) y = y.add(residual);
    return (withGelu ? gelu(y) : y) as X;
  }
}
type NormOptions = { residual?: tf.Tensor | null; gelu?: boolean };
const groupNorm1 = (c: number) => new Norm(c, [1, 2, 3]); // GroupNorm(1, c) on NHWC
const layerNorm = (c: number) => new Norm(c, [-1]);

/** Exact GELU: x·Φ(x), Φ(x) = (1 + erf(x/√2))/2. */
export const gelu = <X extends tf.Tensor>(x: X): X =>
  hasFused("gelu") ? fusedGelu(x) : tf.tidy(() => x.mul(tf.erf(x.mul(Math.SQRT1_2)).add(1)).mul(0.5) as X);

/** 3x3 conv without bias, GroupNorm, GELU, conv, GroupNorm (+ residual and GELU). */
export class DoubleConv extends Module {
  conv1: tf.Variable;
  conv2: tf.Variable;
  norm1: Norm;
  norm2: Norm;
  constructor(cin: number, cout: number, cmid = cout, readonly residual = false) {
    super();
    this.conv1 = this.param("conv1.weight", uniform([3, 3, cin, cmid], 9 * cin));
    this.norm1 = this.child("norm1", groupNorm1(cmid));
    this.conv2 = this.param("conv2.weight", uniform([3, 3, cmid, cout], 9 * cmid));
    this.norm2 = this.child("norm2", groupNorm1(cout));
  }
  forward(x: T4): T4 {
    const h = this.norm1.forward(tf.conv2d(x, this.conv1 as T4, 1, "same"), { gelu: true });
    const y = tf.conv2d(h, this.conv2 as T4, 1, "same");
    return this.residual ? this.norm2.forward(y, { residual: x, gelu: true }) : this.norm2.forward(y);
  }
}

/** SiLU + Linear of the time embedding, added to every pixel of each channel. */
class TimeProj extends Linear {
  add(x: T4, t: T2): T4 {
    const e = this.forward(tf.mul(t, tf.sigmoid(t)));
    return x.add(e.reshape([-1, 1, 1, x.shape[3]]));
  }
}

export class Down extends Module {
  conv1: DoubleConv;
  conv2: DoubleConv;
  emb: TimeProj;
  constructor(cin: number, cout: number, embDim = 256) {
    super();
    this.conv1 = this.child("conv1", new DoubleConv(cin, cin, cin, true));
    this.conv2 = this.child("conv2", new DoubleConv(cin, cout));
    this.emb = this.child("emb", new TimeProj(embDim, cout));
  }
  forward(x: T4, t: T2): T4 {
    return this.emb.add(this.conv2.forward(this.conv1.forward(tf.maxPool(x, 2, 2, "valid"))), t);
  }
}

export class Up extends Module {
  conv1: DoubleConv;
  conv2: DoubleConv;
  emb: TimeProj;
  constructor(cin: number, cout: number, embDim = 256) {
    super();
    this.conv1 = this.child("conv1", new DoubleConv(cin, cin, cin, true));
    this.conv2 = this.child("conv2", new DoubleConv(cin, cout, cin / 2));
    this.emb = this.child("emb", new TimeProj(embDim, cout));
  }
  forward(x: T4, skip: T4, t: T2): T4 {
    const [, h, w] = x.shape;
    const up = tf.image.resizeBilinear(x, [2 * h, 2 * w], true); // align_corners=True
    const cat = tf.concat([skip, up], 3);
    return this.emb.add(this.conv2.forward(this.conv1.forward(cat)), t);
  }
}

/** softmax(q·kᵀ/√d)·v for each head, from qkv [b, n, 3c] (q, k, v side by side; a head has d = c/heads columns). */
export function attention(qkv: tf.Tensor3D, heads: number): tf.Tensor3D {
  if (hasFused("attention")) return fusedAttention(qkv, heads);
  return tf.tidy(() => {
    const [b, n, c3] = qkv.shape, c = c3 / 3, d = c / heads;
    const [q, k, v] = tf.split(qkv, 3, -1).map((p) => p.reshape([b, n, heads, d]).transpose([0, 2, 1, 3])); // (b, heads, n, d)
    const scores = tf.matMul(q as tf.Tensor4D, k as tf.Tensor4D, false, true).mul(1 / Math.sqrt(d)); // (b, heads, n, n)
    const o = tf.matMul(tf.softmax(scores) as tf.Tensor4D, v as tf.Tensor4D); // (b, heads, n, d)
    return o.transpose([0, 2, 1, 3]).reshape([b, n, c]) as tf.Tensor3D;
  });
}

/** LayerNorm, 4-head self-attention, residual; LayerNorm-Linear-GELU-Linear, residual. */
export class SelfAttention extends Module {
  ln: Norm;
  inProj: Linear;
  outProj: Linear;
  ffNorm: Norm;
  ff1: Linear;
  ff2: Linear;
  constructor(readonly c: number, readonly heads = 4) {
    super();
    this.ln = this.child("ln", layerNorm(c));
    this.inProj = this.child("mha.in_proj", new Linear(c, 3 * c));
    this.outProj = this.child("mha.out_proj", new Linear(c, c));
    this.ffNorm = this.child("ff.0", layerNorm(c));
    this.ff1 = this.child("ff.1", new Linear(c, c));
    this.ff2 = this.child("ff.3", new Linear(c, c));
  }
  forward(x: T4): T4 {
    const [b, h, w, c] = x.shape;
    const s = x.reshape([b, h * w, c]); // NHWC: the tokens are already rows
    const qkv = this.inProj.forward(this.ln.forward(s)) as tf.Tensor3D; // (b, n, 3c)
    const a = this.outProj.forward(attention(qkv, this.heads)).add(s);
    const f = this.ff2.forward(gelu(this.ff1.forward(this.ffNorm.forward(a)))).add(a);
    return f.reshape([b, h, w, c]);
  }
}

export interface UNetOptions {
  width?: number; // base channel count c (64 in the tutorial)
  timeDim?: number;
  numClasses?: number; // > 0: class-conditional
}

/** The tutorial's U-Net: 3 Down + attention, a 3-conv bottleneck, 3 Up + attention, 1x1 output. */
export class UNet extends Module {
  readonly width!: number;
  readonly timeDim!: number;
  readonly numClasses!: number;
  inc: DoubleConv;
  down: Down[];
  saDown: SelfAttention[];
  bot: DoubleConv[];
  up: Up[];
  saUp: SelfAttention[];
  outW: tf.Variable;
  outB: tf.Variable;
  labelEmb: tf.Variable | null = null;

  constructor({ width = 64, timeDim = 256, numClasses = 0 }: UNetOptions = {}) {
    super();
    const c = width;
    Object.assign(this, { width, timeDim, numClasses });
    this.inc = this.child("inc", new DoubleConv(3, c));
    this.down = [[c, 2 * c], [2 * c, 4 * c], [4 * c, 4 * c]].map(([i, o], k) =>
      this.child(`down.${k}`, new Down(i, o, timeDim))
    );
    this.saDown = [2 * c, 4 * c, 4 * c].map((ch, k) => this.child(`sa_down.${k}`, new SelfAttention(ch)));
    this.bot = [[4 * c, 8 * c], [8 * c, 8 * c], [8 * c, 4 * c]].map(([i, o], k) =>
      this.child(`bot.${k}`, new DoubleConv(i, o))
    );
    this.up = [[8 * c, 2 * c], [4 * c, c], [2 * c, c]].map(([i, o], k) => this.child(`up.${k}`, new Up(i, o, timeDim)));
    this.saUp = [2 * c, c, c].map((ch, k) => this.child(`sa_up.${k}`, new SelfAttention(ch)));
    this.outW = this.param("outc.weight", uniform([1, 1, c, 3], c));
    this.outB = this.param("outc.bias", uniform([3], c));
    if (numClasses > 0) {
      this.labelEmb = this.param(
        "label_emb.weight",
        tf.randomNormal([numClasses, timeDim], 0, 1, "float32", nextSeed()),
      );
    }
  }

  /** Sinusoidal encoding of t (Transformer-style): [sin(t·ω_i), cos(t·ω_i)], ω_i = 10000^(-2i/dim). */
  encodeTime(t: tf.Tensor1D): T2 {
    return tf.tidy(() => {
      const invFreq = tf.pow(10000, tf.range(0, this.timeDim, 2).div(-this.timeDim));
      const angle = t.toFloat().reshape([-1, 1]).mul(invFreq.reshape([1, -1]));
      return tf.concat([angle.sin(), angle.cos()], -1) as T2;
    });
  }

  /** ε_θ(x_t, t[, y]); labels = null (or an unconditional model) means no class. */
  forward(x: T4, t: tf.Tensor1D, labels: tf.Tensor1D | null = null): T4 {
    if (x.shape[1] % 8 || x.shape[2] % 8) {
      throw new Error(`image size ${x.shape[1]}x${x.shape[2]} is not divisible by 8`);
    }
    return tf.tidy(() => {
      let emb = this.encodeTime(t);
      if (labels && this.labelEmb) {
        emb = emb.add(tf.matMul(tf.oneHot(labels.toInt(), this.numClasses), this.labelEmb as T2));
      }
      const skips = [this.inc.forward(x)];
      for (let i = 0; i < 3; i++) skips.push(this.saDown[i].forward(this.down[i].forward(skips[i], emb)));
      let h = this.bot.reduce((h, conv) => conv.forward(h), skips.pop()!);
      for (let i = 0; i < 3; i++) h = this.saUp[i].forward(this.up[i].forward(h, skips.pop()!, emb));
      return tf.conv2d(h, this.outW as T4, 1, "same").add(this.outB);
    });
  }
}

/** The conditional U-Net: a learned label embedding added to the time encoding. */
export class UNetConditional extends UNet {
  constructor({ numClasses = 10, ...rest }: UNetOptions = {}) {
    super({ ...rest, numClasses });
  }
}
