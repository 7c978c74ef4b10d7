// The evaluation's feature extractor, a small CNN trained on a run's own data, and the Fréchet distance between two
// sets of its features (the FID formula of Heusel et al. 2017, on OUR features: not an FID).
import * as tf from "@tensorflow/tfjs";
import { mulberry32, nextSeed } from "../kernels/backend.ts";
import { Linear, Module } from "../modules.ts";
import { type Dataset, shuffle } from "../utils.ts";

type T4 = tf.Tensor4D;

/** Images in [-1, 1] (NHWC, flat) with one target each. */
export interface ImageSet {
  x: Float32Array;
  y: Int32Array;
  n: number;
  size: number;
}

/**
 * What the classifier learns. "labels": the data set's classes. "rotation": which of 0°, 90°, 180°, 270° an
 * image was turned by, for one-class data (Gidaris et al. 2018): a self-supervised task that needs no
 * negatives and whose features must capture the layout and content of the images (sky up, ground down).
 */
export type Task = "labels" | "rotation";

/**
 * [`depth` × (conv 3x3 + ReLU), 2x2 max-pool] down to 4 px, `depth` last convs + ReLU, global average pool (the
 * features), linear. Eval's judge is a deeper, wider one (depth 2, as VGG's stages) than its classifier (depth 1).
 */
export class Classifier extends Module {
  convs: { w: tf.Variable; b: tf.Variable; pool: boolean }[] = [];
  head: Linear;
  readonly featureDim: number;

  constructor(readonly imageSize: number, readonly numClasses: number, width = 16, depth = 1) {
    super();
    let pools = 0, cin = 3;
    for (let s = imageSize; s > 4; s = Math.floor(s / 2)) pools++;
    for (let k = 0; k <= pools; k++) { // convs before each pooling, and after the last
      const cout = width * 2 ** Math.min(k, 2);
      for (let j = 0; j < depth; j++) {
        const he = tf.randomNormal([3, 3, cin, cout], 0, Math.sqrt(2 / (9 * cin)), "float32", nextSeed()); // He init
        const i = this.convs.length, pool = k < pools && j === depth - 1;
        this.convs.push({
          w: this.param(`conv.${i}.weight`, he),
          b: this.param(`conv.${i}.bias`, tf.zeros([cout])),
          pool,
        });
        cin = cout;
      }
    }
    this.featureDim = cin;
    this.head = this.child("head", new Linear(cin, numClasses));
  }

  /** The penultimate layer: globally averaged ReLU features, [n, featureDim]. */
  features(x: T4): tf.Tensor2D {
    return tf.tidy(() => {
      let h = x;
      for (const { w, b, pool } of this.convs) {
        h = tf.relu(tf.conv2d(h, w as T4, 1, "same").add(b));
        if (pool) h = tf.maxPool(h, 2, 2, "valid");
      }
      return h.mean([1, 2]) as tf.Tensor2D;
    });
  }

  /** Class logits, [n, numClasses]. */
  forward(x: T4): tf.Tensor2D {
    return tf.tidy(() => this.head.forward(this.features(x)) as tf.Tensor2D);
  }
}

/** The images turned by k·90°, k = 0…3, with k as their target (the rotation task's batch). */
export function rotations(x: T4): [T4, tf.Tensor1D] {
  return tf.tidy(() => {
    const turned = [x];
    for (let k = 1; k < 4; k++) turned.push(tf.reverse(tf.transpose(turned[k - 1], [0, 2, 1, 3]), 1)); // +90°, counter-clockwise
    const n = x.shape[0];
    return [tf.concat(turned), tf.tensor1d(Int32Array.from({ length: 4 * n }, (_, i) => Math.floor(i / n)))];
  });
}

/** The inputs and integer targets of a batch for a task. */
function taskBatch(set: ImageSet, idx: number[], task: Task): [T4, tf.Tensor1D] {
  const px = set.size * set.size * 3, x = new Float32Array(idx.length * px);
  idx.forEach((k, i) => x.set(set.x.subarray(k * px, (k + 1) * px), i * px));
  const images = tf.tensor4d(x, [idx.length, set.size, set.size, 3]);
  if (task === "labels") return [images, tf.tensor1d(Int32Array.from(idx, (k) => set.y[k]), "int32")];
  const out = rotations(images);
  images.dispose();
  return out;
}

/** Minimises the cross-entropy with Adam; returns the last epoch's mean loss. */
export async function trainClassifier(
  clf: Classifier,
  set: ImageSet,
  task: Task,
  { epochs = 15, batchSize = 16, lr = 3e-3, seed = 0, log = (_: string) => {} } = {},
): Promise<number> {
  const opt = tf.train.adam(lr);
  const vars = [...clf.weights.values()], rand = mulberry32(seed);
  let mean = NaN;
  for (let epoch = 0; epoch < epochs; epoch++) {
    const order = shuffle(Array.from({ length: set.n }, (_, i) => i), rand);
    let sum = 0, batches = 0;
    for (let s = 0; s < set.n; s += batchSize) {
      const [x, y] = taskBatch(set, order.slice(s, s + batchSize), task);
      const loss = opt.minimize(
        () => {
          const logits = clf.forward(x);
          return tf.losses.softmaxCrossEntropy(tf.oneHot(y, clf.numClasses), logits) as tf.Scalar;
        },
        true,
        vars,
      )!;
      sum += (await loss.data())[0];
      batches++;
      tf.dispose([x, y, loss]);
    }
    mean = sum / batches;
    log(`classifier epoch ${epoch + 1}/${epochs}: cross-entropy ${mean.toFixed(4)}`);
  }
  opt.dispose();
  return mean;
}

/** Features [n × featureDim] of a set's images (as they are), and the task's accuracy on them. */
export async function classify(clf: Classifier, set: ImageSet, task: Task, batchSize = 100) {
  const features = new Float32Array(set.n * clf.featureDim);
  const predicted = new Int32Array(set.n);
  let correct = 0, total = 0;
  for (let s = 0; s < set.n; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, set.n - s) }, (_, i) => s + i);
    const [x, y] = taskBatch(set, idx, task);
    const [f, pred, hits] = tf.tidy(() => {
      const f = clf.features(x.slice(0, idx.length)); // the unturned images
      const pred = clf.forward(x).argMax(1);
      return [f, pred.slice(0, idx.length), pred.equal(y.toInt()).sum()];
    });
    features.set(await f.data(), s * clf.featureDim);
    predicted.set(await pred.data(), s);
    correct += (await hits.data())[0];
    total += x.shape[0];
    tf.dispose([x, y, f, pred, hits]);
  }
  return { features, predicted, accuracy: correct / total };
}

/** Up to `max` images of one augmented pass over a data set, in shuffled order, with their labels. */
export function collect(data: Dataset, max: number, seed: number): ImageSet {
  const px = data.size * data.size * 3, n = Math.min(max, data.length);
  const set: ImageSet = { x: new Float32Array(n * px), y: new Int32Array(n), n, size: data.size };
  let k = 0;
  for (const b of data.batches(256, mulberry32(seed))) {
    const m = Math.min(b.n, n - k);
    set.x.set(b.x.subarray(0, m * px), k * px);
    set.y.set(b.labels.subarray(0, m), k);
    if ((k += m) >= n) break;
  }
  return set;
}

/** Images [start, end) of a set. */
export function slice(set: ImageSet, start: number, end: number): ImageSet {
  const px = set.size * set.size * 3;
  return { ...set, x: set.x.subarray(start * px, end * px), y: set.y.subarray(start, end), n: end - start };
}

// ------------------------------------------------------------------ the Fréchet distance

/** Mean and (unbiased) covariance of n feature vectors of dimension d, stored row after row. */
export function featureStats(f: ArrayLike<number>, n: number, d: number) {
  const mu = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mu[j] += f[i * d + j] / n;
  const sigma = Array.from({ length: d }, () => new Float64Array(d));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const a = f[i * d + j] - mu[j];
      for (let k = 0; k <= j; k++) sigma[j][k] += a * (f[i * d + k] - mu[k]) / Math.max(1, n - 1);
    }
  }
  for (let j = 0; j < d; j++) for (let k = 0; k < j; k++) sigma[k][j] = sigma[j][k];
  return { mu, sigma, n };
}

type Matrix = ArrayLike<number>[];
/** A Gaussian's mean and covariance (e.g. of features). */
export type Gaussian = { mu: ArrayLike<number>; sigma: Matrix };

/** Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: A = V·diag(values)·Vᵀ. */
export function symmetricEigen(A: Matrix): { values: number[]; vectors: Float64Array[] } {
  const n = A.length, a = A.map((r) => Float64Array.from(r));
  const v = Array.from({ length: n }, (_, i) => Float64Array.from({ length: n }, (_, j) => +(i === j)));
  const norm = a.reduce((s, r) => s + r.reduce((t, x) => t + x * x, 0), 0);
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] ** 2;
    if (off <= 1e-30 * norm) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (a[p][q] === 0) continue;
        const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]); // the rotation that zeroes a[p][q]
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (const m of [a, v]) { // columns p and q: M·J
          for (const r of m) [r[p], r[q]] = [c * r[p] - s * r[q], s * r[p] + c * r[q]];
        }
        for (let k = 0; k < n; k++) [a[p][k], a[q][k]] = [c * a[p][k] - s * a[q][k], s * a[p][k] + c * a[q][k]]; // Jᵀ·A
      }
    }
  }
  return { values: a.map((r, i) => r[i]), vectors: v };
}

function matMul(A: Matrix, B: Matrix): Float64Array[] {
  const n = A.length, m = B[0].length, inner = B.length;
  const C = Array.from({ length: n }, () => new Float64Array(m));
  for (let i = 0; i < n; i++) for (let k = 0; k < inner; k++) for (let j = 0; j < m; j++) C[i][j] += A[i][k] * B[k][j];
  return C;
}

/**
 * Fréchet distance of two Gaussians (Dowson & Landau 1982): ‖μ1-μ2‖² + Tr(Σ1 + Σ2 - 2(Σ1Σ2)^{1/2}),
 * with Tr((Σ1Σ2)^{1/2}) = Σ √λ_i of the symmetric PSD matrix Σ1^{1/2}·Σ2·Σ1^{1/2} (similar to Σ1Σ2).
 */
export function frechetDistance(a: Gaussian, b: Gaussian): number {
  const d = a.mu.length;
  const e = symmetricEigen(a.sigma);
  const sqrtA = Array.from(
    { length: d },
    (_, i) =>
      Float64Array.from(
        { length: d },
        (_, j) => e.values.reduce((s, l, k) => s + e.vectors[i][k] * Math.sqrt(Math.max(0, l)) * e.vectors[j][k], 0),
      ),
  );
  const m = matMul(matMul(sqrtA, b.sigma), sqrtA);
  for (let i = 0; i < d; i++) for (let j = 0; j < i; j++) m[i][j] = m[j][i] = (m[i][j] + m[j][i]) / 2;
  const trSqrt = symmetricEigen(m).values.reduce((s, l) => s + Math.sqrt(Math.max(0, l)), 0);
  let dist = meanTerm(a, b) - 2 * trSqrt;
  for (let i = 0; i < d; i++) dist += a.sigma[i][i] + b.sigma[i][i];
  return Math.max(0, dist);
}

/** The Fréchet distance's first term, ‖μ1-μ2‖²: the part of it that a shift of the mean features makes. */
export function meanTerm(a: Gaussian, b: Gaussian): number {
  let sum = 0;
  for (let i = 0; i < a.mu.length; i++) sum += (a.mu[i] - b.mu[i]) ** 2;
  return sum;
}

// ------------------------------------------------------------------ k-NN precision and recall

/** Squared Euclidean distances between the rows of a [n × d] and b [m × d], as n rows of m. */
function squaredDistances(a: ArrayLike<number>, n: number, b: ArrayLike<number>, m: number, d: number) {
  const out = new Float64Array(n * m);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += (a[i * d + c] - b[j * d + c]) ** 2;
      out[i * m + j] = s;
    }
  }
  return out;
}

/** Each row's squared distance to its k-th nearest neighbour among the other rows of its set (itself excluded). */
export function kthNeighbourRadii(f: ArrayLike<number>, n: number, d: number, k: number): Float64Array {
  if (k >= n) throw new RangeError(`k = ${k} needs more than ${k} feature vectors, got ${n}`);
  const dist = squaredDistances(f, n, f, n, d);
  return Float64Array.from({ length: n }, (_, i) => {
    const others = Array.from(dist.subarray(i * n, (i + 1) * n)).filter((_, j) => j !== i);
    return others.sort((x, y) => x - y)[k - 1];
  });
}

/**
 * Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1–3): each set's manifold is the union of balls around
 * its vectors reaching their k-th nearest neighbour; precision is the share of generated vectors inside the real
 * manifold, recall the share of real vectors inside the generated one.
 */
export function precisionRecall(
  real: ArrayLike<number>,
  nReal: number,
  fake: ArrayLike<number>,
  nFake: number,
  d: number,
  k = 3,
) {
  const realRadii = kthNeighbourRadii(real, nReal, d, k), fakeRadii = kthNeighbourRadii(fake, nFake, d, k);
  const dist = squaredDistances(fake, nFake, real, nReal, d); // fake i to real j at i·nReal + j
  let inReal = 0, inFake = 0;
  for (let i = 0; i < nFake; i++) {
    let inside = false;
    for (let j = 0; j < nReal && !inside; j++) inside = dist[i * nReal + j] <= realRadii[j];
    inReal += inside ? 1 : 0;
  }
  for (let j = 0; j < nReal; j++) {
    let inside = false;
    for (let i = 0; i < nFake && !inside; i++) inside = dist[i * nReal + j] <= fakeRadii[i];
    inFake += inside ? 1 : 0;
  }
  return { precision: inReal / nFake, recall: inFake / nReal };
}
