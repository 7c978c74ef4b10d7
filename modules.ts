// The tutorial's U-Net, NHWC throughout: DoubleConv, Down, Up, SelfAttention, UNet, UNetConditional.
import * as tf from "@tensorflow/tfjs";
import {
  nextSeed,
  type Tensor,
  type Tensor1D,
  type Tensor2D,
  type Tensor4D,
  type Variable,
} from "./kernels/backend.ts";
import { fusedAttention, fusedGelu, fusedNorm, hasFused } from "./kernels/fused.ts";

/** @internal A batch of feature maps [b, h, w, c] (NHWC). */
type T4 = Tensor4D;
/** @internal A time embedding [b, timeDim]. */
type T2 = Tensor2D;

/** A layer's weights by their name in the tutorial's state_dict ("down1.maxpool_conv.1.double_conv.0.weight"). */
export class Module {
  /** Every weight of the layer and its children, by its state_dict name. */
  readonly weights: Map<string, Variable> = new Map();

  /** A new weight `name`, initialized to `init` (which it takes over). */
  protected param(name: string, init: Tensor): Variable {
    const v = tf.variable(init);
    init.dispose();
    this.weights.set(name, v);
    return v;
  }

  /** Takes a child layer's weights under `name.` and returns the child. */
  protected child<M extends Module>(name: string, m: M): M {
    for (const [k, v] of m.weights) this.weights.set(`${name}.${k}`, v);
    return m;
  }

  /** The number of trained values of all the weights. */
  get parameterCount(): number {
    return [...this.weights.values()].reduce((n, v) => n + v.size, 0);
  }

  /** Frees the weights. */
  dispose() {
    for (const v of this.weights.values()) v.dispose();
  }
}

/** PyTorch's default init for Conv2d and Linear: U(-1/sqrt(fanIn), 1/sqrt(fanIn)). */
const uniform = (shape: number[], fanIn: number): Tensor =>
  tf.randomUniform(shape, -1 / Math.sqrt(fanIn), 1 / Math.sqrt(fanIn), "float32", nextSeed());

/** PyTorch's xavier_uniform_: U(-a, a), a = √(6/(fanIn + fanOut)). */
const xavierUniform = (cin: number, cout: number): Tensor =>
  tf.randomUniform([cin, cout], -Math.sqrt(6 / (cin + cout)), Math.sqrt(6 / (cin + cout)), "float32", nextSeed());

/** y = x·W + b, W stored [in, out] (PyTorch's nn.Linear stores [out, in]: the files convert). */
export class Linear extends Module {
  /** W, [in, out]. */
  w: Variable;
  /** b, [out]. */
  b: Variable;
  /** A layer from `cin` to `cout` features, with the state_dict names of W and b, and their initial values. */
  constructor(
    cin: number,
    cout: number,
    [wName, bName] = ["weight", "bias"],
    init: { w: Tensor; b: Tensor } = { w: uniform([cin, cout], cin), b: uniform([cout], cin) }, // nn.Linear's
  ) {
    super();
    this.w = this.param(wName, init.w);
    this.b = this.param(bName, init.b);
  }
  /** x·W + b over the last axis of x. */
  forward(x: Tensor): Tensor {
    const flat = x.reshape([-1, x.shape.at(-1)!]) as T2;
    return tf.fused.matMul({ a: flat, b: this.w as T2, bias: this.b }).reshape([...x.shape.slice(0, -1), -1]);
  }
}

/** Normalization over the last `axes` with a per-channel affine: GroupNorm(1, c) and LayerNorm(c). */
export class Norm extends Module {
  /** The per-channel scale γ. */
  g: Variable;
  /** The per-channel shift β. */
  b: Variable;
  /** A norm of `c` channels over `axes`: [1, 2, 3] is GroupNorm(1, c) on NHWC, [-1] is LayerNorm(c). */
  constructor(c: number, readonly axes: number[]) {
    super();
    this.g = this.param("weight", tf.ones([c]));
    this.b = this.param("bias", tf.zeros([c]));
  }
  /** The length of the rows that are normalized: the product of the normalized axes. */
  rowSize(x: Tensor): number {
    return this.axes.reduce((n, a) => n * x.shape.at(a)!, 1);
  }
  /** (x - mean)/√(var + 1e-5)·γ + β over the normalized axes. */
  forward<X extends Tensor>(x: X): X {
    if (hasFused("norm")) return fusedNorm(x, this.g, this.b, { rowSize: this.rowSize(x) }) as X;
    const rows = x.reshape([-1, this.rowSize(x)]);
    const { mean, variance } = tf.moments(rows, 1, true);
    return rows.sub(mean).mul(tf.rsqrt(variance.add(1e-5))).reshape(x.shape).mul(this.g).add(this.b) as X;
  }
}
const groupNorm1 = (c: number) => new Norm(c, [1, 2, 3]); // GroupNorm(1, c) on NHWC
const layerNorm = (c: number) => new Norm(c, [-1]);

/** Exact GELU: x·Φ(x), Φ(x) = (1 + erf(x/√2))/2. */
export const gelu = <X extends Tensor>(x: X): X =>
  hasFused("gelu") ? fusedGelu(x) : tf.tidy(() => x.mul(tf.erf(x.mul(Math.SQRT1_2)).add(1)).mul(0.5) as X);

/** GELU(norm(y)), or with a residual GELU(residual + norm(y)): one fused kernel where the backend has it. */
export function normGelu<X extends Tensor>(norm: Norm, y: X, residual: X | null = null): X {
  if (hasFused("norm")) return fusedNorm(y, norm.g, norm.b, { rowSize: norm.rowSize(y), residual, gelu: true }) as X;
  const normed = norm.forward(y);
  return gelu(residual ? normed.add(residual) : normed);
}

/** double_conv: 3x3 conv without bias, GroupNorm, GELU, conv, GroupNorm; with `residual`, F.gelu(x + double_conv(x)). */
export class DoubleConv extends Module {
  /** The first 3x3 conv, [3, 3, cin, cmid]. */
  conv1: Variable;
  /** The first GroupNorm. */
  norm1: Norm;
  /** The second 3x3 conv, [3, 3, cmid, cout]. */
  conv2: Variable;
  /** The second GroupNorm. */
  norm2: Norm;
  /** Two convs from `cin` to `cout` channels through `cmid`; `residual` adds x (cin = cout). */
  constructor(cin: number, cout: number, cmid = cout, readonly residual = false) {
    super();
    this.conv1 = this.param("double_conv.0.weight", uniform([3, 3, cin, cmid], 9 * cin));
    this.norm1 = this.child("double_conv.1", groupNorm1(cmid));
    this.conv2 = this.param("double_conv.3.weight", uniform([3, 3, cmid, cout], 9 * cmid));
    this.norm2 = this.child("double_conv.4", groupNorm1(cout));
  }
  /** The block on x (NHWC). */
  forward(x: T4): T4 {
    let h = tf.conv2d(x, this.conv1 as T4, 1, "same");
    h = normGelu(this.norm1, h); // GroupNorm, GELU
    h = tf.conv2d(h, this.conv2 as T4, 1, "same");
    if (this.residual) return normGelu(this.norm2, h, x); // F.gelu(x + GroupNorm(h))
    return this.norm2.forward(h);
  }
}

/** emb_layer: SiLU + Linear of the time embedding, as [b, 1, 1, c] to add to every pixel of each channel. */
export class EmbLayer extends Linear {
  /** Linear(SiLU(t)) as [b, 1, 1, c]. */
  override forward(t: T2): T4 {
    const e = super.forward(tf.mul(t, tf.sigmoid(t)));
    return e.reshape([-1, 1, 1, e.shape.at(-1)!]);
  }
}

/** maxpool_conv: MaxPool2d(2), DoubleConv (residual), DoubleConv; then + emb_layer(t). */
export class Down extends Module {
  /** The residual DoubleConv at cin, then the one to cout. */
  maxpoolConv: [DoubleConv, DoubleConv];
  /** The time embedding's projection to cout channels. */
  embLayer: EmbLayer;
  /** Halves the image, from `cin` to `cout` channels, with a time embedding of `embDim`. */
  constructor(cin: number, cout: number, embDim = 256) {
    super();
    this.maxpoolConv = [
      this.child("maxpool_conv.1", new DoubleConv(cin, cin, cin, true)),
      this.child("maxpool_conv.2", new DoubleConv(cin, cout)),
    ];
    this.embLayer = this.child("emb_layer.1", new EmbLayer(embDim, cout));
  }
  /** The block on x, with the time embedding t. */
  forward(x: T4, t: T2): T4 {
    const [residualConv, conv] = this.maxpoolConv;
    x = tf.maxPool(x, 2, 2, "valid");
    x = residualConv.forward(x);
    x = conv.forward(x);
    const emb = this.embLayer.forward(t);
    return x.add(emb);
  }
}

/** up (bilinear, align_corners), cat with the skip, conv: DoubleConv (residual), DoubleConv; then + emb_layer(t). */
export class Up extends Module {
  /** The residual DoubleConv at cin, then the one to cout. */
  conv: [DoubleConv, DoubleConv];
  /** The time embedding's projection to cout channels. */
  embLayer: EmbLayer;
  /** Doubles the image; `cin` is the channels of x and the skip together, `cout` those it gives. */
  constructor(cin: number, cout: number, embDim = 256) {
    super();
    this.conv = [
      this.child("conv.0", new DoubleConv(cin, cin, cin, true)),
      this.child("conv.1", new DoubleConv(cin, cout, cin / 2)),
    ];
    this.embLayer = this.child("emb_layer.1", new EmbLayer(embDim, cout));
  }
  /** The block on x, with the skip connection of the same size after upsampling, and t. */
  forward(x: T4, skip: T4, t: T2): T4 {
    const [residualConv, conv] = this.conv;
    const [, h, w] = x.shape;
    x = tf.image.resizeBilinear(x, [2 * h, 2 * w], true); // align_corners=True
    x = tf.concat([skip, x], 3);
    x = residualConv.forward(x);
    x = conv.forward(x);
    const emb = this.embLayer.forward(t);
    return x.add(emb);
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

/** ln, mha (4 heads), residual; ff_self: LayerNorm-Linear-GELU-Linear, residual. */
export class SelfAttention extends Module {
  /** mha.in_proj_weight/bias: q, k and v side by side */
  inProj: Linear;
  /** mha.out_proj */
  outProj: Linear;
  /** ln, before the attention. */
  ln: Norm;
  /** ff_self.0 */
  ffNorm: Norm;
  /** ff_self.1 */
  ff1: Linear;
  /** ff_self.3 */
  ff2: Linear;
  /** Attention over the pixels of a feature map with `c` channels. */
  constructor(readonly c: number, readonly heads = 4) {
    super();
    // nn.MultiheadAttention's own init: Xavier-uniform in_proj_weight, zero in_proj_bias and out_proj.bias
    const inInit = { w: xavierUniform(c, 3 * c), b: tf.zeros([3 * c]) };
    this.inProj = this.child("mha", new Linear(c, 3 * c, ["in_proj_weight", "in_proj_bias"], inInit));
    const outInit = { w: uniform([c, c], c), b: tf.zeros([c]) };
    this.outProj = this.child("mha.out_proj", new Linear(c, c, ["weight", "bias"], outInit));
    this.ln = this.child("ln", layerNorm(c));
    this.ffNorm = this.child("ff_self.0", layerNorm(c));
    this.ff1 = this.child("ff_self.1", new Linear(c, c));
    this.ff2 = this.child("ff_self.3", new Linear(c, c));
  }
  /** The block on x (NHWC): attention over its h·w pixels. */
  forward(x: T4): T4 {
    const [b, h, w, c] = x.shape;
    const s = x.reshape([b, h * w, c]); // NHWC: the tokens are already rows
    const qkv = this.inProj.forward(this.ln.forward(s)) as tf.Tensor3D; // (b, n, 3c)
    const a = this.outProj.forward(attention(qkv, this.heads)).add(s);
    const f = this.ff2.forward(gelu(this.ff1.forward(this.ffNorm.forward(a)))).add(a);
    return f.reshape([b, h, w, c]);
  }
}

/** The shape of a UNet: its width, time embedding and classes. */
export interface UNetOptions {
  /** base channel count c (64 in the tutorial) */
  width?: number;
  /** the size of the time encoding (256 in the tutorial) */
  timeDim?: number;
  /** > 0: class-conditional */
  numClasses?: number;
  /** the tutorial's later variant: bot1 and bot3 at 4c, no bot2 */
  removeDeepConv?: boolean;
}

/** The tutorial's U-Net: 3 Down + attention, a 3-conv bottleneck, 3 Up + attention, 1x1 output. */
export class UNet extends Module {
  /** The base channel count c. */
  readonly width!: number;
  /** The size of the time encoding. */
  readonly timeDim!: number;
  /** The number of classes (0: unconditional). */
  readonly numClasses!: number;
  /** The later variant without bot2. */
  readonly removeDeepConv!: boolean;
  /** inc: the first DoubleConv, 3 → c channels. */
  inc: DoubleConv;
  /** down1: c → 2c, half size. */
  down1: Down;
  /** sa1: attention at 2c. */
  sa1: SelfAttention;
  /** down2: 2c → 4c. */
  down2: Down;
  /** sa2: attention at 4c. */
  sa2: SelfAttention;
  /** down3: 4c → 4c. */
  down3: Down;
  /** sa3: attention at 4c. */
  sa3: SelfAttention;
  /** bot1: the bottleneck's first DoubleConv. */
  bot1: DoubleConv;
  /** bot2: its second (null in the variant without it). */
  bot2: DoubleConv | null = null;
  /** bot3: its last, back to 4c. */
  bot3: DoubleConv;
  /** up1: 8c (x and the skip) → 2c, double size. */
  up1: Up;
  /** sa4: attention at 2c. */
  sa4: SelfAttention;
  /** up2: 4c → c. */
  up2: Up;
  /** sa5: attention at c. */
  sa5: SelfAttention;
  /** up3: 2c → c. */
  up3: Up;
  /** sa6: attention at c. */
  sa6: SelfAttention;
  /** outc: Conv2d(c, 3, kernel_size=1) */
  outcWeight: Variable;
  /** outc.bias */
  outcBias: Variable;
  /** label_emb: one row of timeDim per class (conditional only). */
  labelEmb: Variable | null = null;

  /**
   * A new U-Net (PyTorch's initialization, from the seed stream).
   * @example
   * ```ts
   * import { UNet } from "@ddpm/ddpm";
   *
   * const model = new UNet({ width: 64 }); // the tutorial's UNet()
   * console.log(model.parameterCount); // 23,332,739
   * ```
   */
  constructor({ width = 64, timeDim = 256, numClasses = 0, removeDeepConv = false }: UNetOptions = {}) {
    super();
    const c = width, bot = removeDeepConv ? 4 * c : 8 * c;
    Object.assign(this, { width, timeDim, numClasses, removeDeepConv });
    this.inc = this.child("inc", new DoubleConv(3, c));
    this.down1 = this.child("down1", new Down(c, 2 * c, timeDim));
    this.sa1 = this.child("sa1", new SelfAttention(2 * c));
    this.down2 = this.child("down2", new Down(2 * c, 4 * c, timeDim));
    this.sa2 = this.child("sa2", new SelfAttention(4 * c));
    this.down3 = this.child("down3", new Down(4 * c, 4 * c, timeDim));
    this.sa3 = this.child("sa3", new SelfAttention(4 * c));
    this.bot1 = this.child("bot1", new DoubleConv(4 * c, bot));
    if (!removeDeepConv) this.bot2 = this.child("bot2", new DoubleConv(bot, bot));
    this.bot3 = this.child("bot3", new DoubleConv(bot, 4 * c));
    this.up1 = this.child("up1", new Up(8 * c, 2 * c, timeDim));
    this.sa4 = this.child("sa4", new SelfAttention(2 * c));
    this.up2 = this.child("up2", new Up(4 * c, c, timeDim));
    this.sa5 = this.child("sa5", new SelfAttention(c));
    this.up3 = this.child("up3", new Up(2 * c, c, timeDim));
    this.sa6 = this.child("sa6", new SelfAttention(c));
    this.outcWeight = this.param("outc.weight", uniform([1, 1, c, 3], c));
    this.outcBias = this.param("outc.bias", uniform([3], c));
    if (numClasses > 0) {
      this.labelEmb = this.param(
        "label_emb.weight",
        tf.randomNormal([numClasses, timeDim], 0, 1, "float32", nextSeed()),
      );
    }
  }

  /** pos_encoding of t (Transformer-style): [sin(t·ω_i), cos(t·ω_i)], ω_i = 10000^(-2i/dim). */
  posEncoding(t: Tensor1D): T2 {
    return tf.tidy(() => {
      const invFreq = tf.pow(10000, tf.range(0, this.timeDim, 2).div(-this.timeDim));
      const angle = t.toFloat().reshape([-1, 1]).mul(invFreq.reshape([1, -1]));
      return tf.concat([angle.sin(), angle.cos()], -1) as T2;
    });
  }

  /** ε_θ(x_t, t[, y]); labels = null (or an unconditional model) means no class. */
  forward(x: T4, t: Tensor1D, labels: Tensor1D | null = null): T4 {
    if (x.shape[1] % 8 || x.shape[2] % 8) {
      throw new Error(`image size ${x.shape[1]}x${x.shape[2]} is not divisible by 8`);
    }
    return tf.tidy(() => {
      let emb = this.posEncoding(t);
      if (labels && this.labelEmb) { // t += label_emb(y)
        emb = emb.add(tf.matMul(tf.oneHot(labels.toInt(), this.numClasses), this.labelEmb as T2));
      }
      return this.unetForward(x, emb);
    });
  }

  /** The tutorial's unet_forwad, line by line. */
  unetForward(x: T4, t: T2): T4 {
    const x1 = this.inc.forward(x);
    let x2 = this.down1.forward(x1, t);
    x2 = this.sa1.forward(x2);
    let x3 = this.down2.forward(x2, t);
    x3 = this.sa2.forward(x3);
    let x4 = this.down3.forward(x3, t);
    x4 = this.sa3.forward(x4);

    x4 = this.bot1.forward(x4);
    if (this.bot2) x4 = this.bot2.forward(x4);
    x4 = this.bot3.forward(x4);

    let h = this.up1.forward(x4, x3, t);
    h = this.sa4.forward(h);
    h = this.up2.forward(h, x2, t);
    h = this.sa5.forward(h);
    h = this.up3.forward(h, x1, t);
    h = this.sa6.forward(h);
    return tf.conv2d(h, this.outcWeight as T4, 1, "same").add(this.outcBias);
  }
}

/** The conditional U-Net: a learned label embedding added to the time encoding. */
export class UNetConditional extends UNet {
  /** A conditional U-Net of `numClasses` classes (default 10, as CIFAR-10). */
  constructor({ numClasses = 10, ...rest }: UNetOptions = {}) {
    super({ ...rest, numClasses });
  }
}
