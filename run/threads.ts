// Every core on a CPU: data parallel in one process. Each extra thread is a worker with its own wasm backend and a
// copy of the U-Net; a step shares its batch among the threads (this one takes the first rows), each computes the
// forward (and backward) of its rows, and the gradients are summed here, where the one AdamW and the EMA run. The
// step is the same computation as on one thread, up to the order of float additions. The threads meet through
// SharedArrayBuffers and Atomics, so forward() and lossGradients() are synchronous, as tfjs's own ops are.
// This file is also the workers' script (new Worker(import.meta.url)).
import * as tf from "@tensorflow/tfjs";
import { type Scalar, setBackend, type Tensor, type Tensor1D, type Tensor4D } from "../kernels/backend.ts";
import { type NoiseModel, weightedMse } from "../diffusion.ts";
import { UNet, type UNetOptions } from "../modules.ts";

/** A step's loss and the gradients of its weights, by name. */
export type LossGradients = { value: Scalar; grads: Map<string, Tensor> };

/**
 * The loss of Algorithm 1, ‖target - ε_θ(x_t, t)‖² (each image's mean, weighted by `lossWeights` if given: weightedMse),
 * and its gradients by weight name, times `share`.
 */
export function lossGradients(
  model: UNet,
  xt: Tensor4D,
  t: Tensor1D,
  target: Tensor4D,
  lossWeights: Tensor1D | null,
  labels: Tensor1D | null,
  share = 1, // the share of the batch these rows are: their mean loss, weighted, adds up to the batch's
): LossGradients {
  const weights = [...model.weights.values()];
  const { value, grads } = tf.variableGrads(() => {
    const loss = weightedMse(target, model.forward(xt, t, labels), lossWeights);
    return share === 1 ? loss : loss.mul(share);
  }, weights);
  // (a weight the step did not use has none: the label embedding on an unconditional step)
  const used = [...model.weights].filter(([, w]) => grads[w.name]);
  return { value, grads: new Map(used.map(([name, w]) => [name, grads[w.name]])) };
}

/** The threads a backend runs on: on wasm, `requested` (0: every core); the others have their own. */
export const threadCount = (backend: string, requested: number) =>
  backend === "wasm" ? requested || navigator.hardwareConcurrency || 1 : 1;

/** A log line's words for a backend and its threads. */
export const describeThreads = (backend: string, count: number) =>
  `backend ${backend}, ${count} thread${count > 1 ? "s" : ""}`;

const NAME = "ddpm-thread";
const scope = self as unknown as {
  name?: string;
  onmessage: (e: MessageEvent) => void;
  postMessage(message: string): void;
  close(): void;
};

/** A worker's control slots: Int32 indices into its control buffer (then an error message, from byte 64). */
const SLOT = {
  request: 0,
  done: 1,
  command: 2,
  rows: 3,
  size: 4,
  hasLabels: 5,
  newWeights: 6,
  errorBytes: 7,
  hasLossWeights: 10,
};
/** Its two numbers: Float32 indices into the same buffer. */
const NUMBER = { share: 8, loss: 9 };
const ERROR_AT = 64;
const ERROR_MAX = 960;
const FORWARD = 1;
const GRADIENTS = 2;
const QUIT = 3;

/** What the main thread and one worker share: the control slots, the rows in and out, the gradients. */
interface Link {
  control: SharedArrayBuffer;
  io: SharedArrayBuffer; // growable: see ioLayout
  grads: SharedArrayBuffer; // every weight's gradient, flat (see flatWeights)
}

/**
 * Where r rows lie in a worker's io buffer (floats): `images` batches of r images (x, or x_t and the target), t, labels,
 * the loss weights, ε_θ.
 */
function ioLayout(r: number, pixels: number, images: number) {
  const t = images * r * pixels;
  return { t, labels: t + r, lossWeights: t + 2 * r, out: t + 3 * r, end: t + 3 * r + (images === 1 ? r * pixels : 0) };
}

/** Each weight of a model with its offset in one flat array of them all, in model.weights' order. */
function* flatWeights(model: UNet) {
  let at = 0;
  for (const [name, w] of model.weights) {
    yield { name, w, at };
    at += w.size;
  }
}

/** The rows of a batch of n that each of `count` threads takes: [start, end), none empty. */
export function shares(n: number, count: number): [number, number][] {
  const k = Math.min(n, count);
  return Array.from({ length: k }, (_, i) => [Math.floor(i * n / k), Math.floor((i + 1) * n / k)]);
}

/** Rows [start, end) of a batch. */
const rows = <X extends tf.Tensor>(x: X, [start, end]: [number, number]): X => x.slice(start, end - start) as X;

/** A pool of threads for U-Nets of one shape: this thread and count - 1 workers. */
export class Threads {
  private synced: UNet | null = null; // the model whose weights the workers hold
  private constructor(
    readonly count: number,
    private readonly workers: Worker[],
    private readonly links: Link[],
    private readonly weights: SharedArrayBuffer, // every weight, flat
  ) {}

  /** `count` threads in all (count - 1 workers, each loading the wasm backend) for models shaped like `model`. */
  static async start(count: number, model: UNet): Promise<Threads> {
    const { width, timeDim, numClasses, removeDeepConv } = model;
    const shape: UNetOptions = { width, timeDim, numClasses, removeDeepConv };
    const bytes = 4 * model.parameterCount;
    const weights = new SharedArrayBuffer(bytes);
    const links = Array.from({ length: count - 1 }, () => ({
      control: new SharedArrayBuffer(ERROR_AT + ERROR_MAX),
      io: new SharedArrayBuffer(0, { maxByteLength: 2 ** 31 }),
      grads: new SharedArrayBuffer(bytes),
    }));
    const workers = links.map(() => new Worker(import.meta.url, { type: "module", name: NAME }));
    const ready = workers.map((w, i) =>
      new Promise<void>((resolve, reject) => {
        w.onmessage = (e) => e.data === "ready" ? resolve() : reject(new Error(`thread ${i + 1}: ${e.data}`));
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`thread ${i + 1}: ${e.message}`));
        };
        w.postMessage({ shape, link: links[i], weights });
      })
    );
    await Promise.all(ready).catch((e) => {
      workers.forEach((w) => w.terminate());
      throw e;
    });
    return new Threads(count, workers, links, weights);
  }

  /** ε_θ(x, t, y), the rows shared among the threads. The workers load `model`'s weights when they hold another's. */
  forward(model: UNet, x: Tensor4D, t: Tensor1D, labels: Tensor1D | null): Tensor4D {
    const parts = shares(x.shape[0], this.count);
    if (parts.length === 1) return model.forward(x, t, labels);
    const newWeights = this.synced !== model;
    if (newWeights) this.writeWeights(model);
    const busy = this.post(FORWARD, parts, [x], t, labels, newWeights);
    const mine = tf.tidy(() => model.forward(rows(x, parts[0]), rows(t, parts[0]), labels && rows(labels, parts[0])));
    this.wait(busy);
    const [, h, w, c] = x.shape;
    const theirs = busy.map((link, i) => {
      const r = parts[i + 1][1] - parts[i + 1][0], { out } = ioLayout(r, h * w * c, 1);
      return tf.tensor4d(new Float32Array(link.io, 4 * out, r * h * w * c), [r, h, w, c]);
    });
    const all = tf.concat([mine, ...theirs], 0) as Tensor4D;
    tf.dispose([mine, ...theirs]);
    return all;
  }

  /** `model` as a NoiseModel (for sampling) whose forward shares the rows among the threads. */
  noiseModel(model: UNet): NoiseModel {
    return { forward: (x, t, labels) => this.forward(model, x, t, labels ?? null) };
  }

  /** lossGradients of the whole batch: each thread's share, the gradients summed. The workers load the weights. */
  lossGradients(
    model: UNet,
    xt: Tensor4D,
    t: Tensor1D,
    target: Tensor4D,
    lossWeights: Tensor1D | null,
    labels: Tensor1D | null,
  ): LossGradients {
    const n = xt.shape[0], parts = shares(n, this.count), [start, end] = parts[0];
    if (parts.length === 1) return lossGradients(model, xt, t, target, lossWeights, labels);
    this.writeWeights(model);
    this.synced = null; // the optimizer is about to change them
    const busy = this.post(GRADIENTS, parts, [xt, target], t, labels, true, lossWeights);
    const mine0 = parts[0];
    const mineRows = [rows(xt, mine0), rows(t, mine0), rows(target, mine0), lossWeights && rows(lossWeights, mine0)];
    mineRows.push(labels && rows(labels, mine0));
    const [x, tRows, targetRows, w, y] = mineRows as [Tensor4D, Tensor1D, Tensor4D, Tensor1D | null, Tensor1D | null];
    const mine = lossGradients(model, x, tRows, targetRows, w, y, (end - start) / n), grads = mine.grads;
    let value = mine.value;
    tf.dispose(mineRows.filter((r) => r !== null));
    this.wait(busy);
    const offsets = new Map([...flatWeights(model)].map(({ name, at }) => [name, at]));
    for (const link of busy) {
      value = replace(value, value.add(new Float32Array(link.control)[NUMBER.loss]));
      const theirs = new Float32Array(link.grads);
      for (const [name, g] of grads) { // added in place: a step's gradients are its own tensors
        const mineG = heapOf(g), at = offsets.get(name)!;
        for (let i = 0; i < mineG.length; i++) mineG[i] += theirs[at + i];
      }
    }
    return { value, grads };
  }

  /** Ends the workers. */
  close() {
    for (const link of this.links) notify(link, QUIT);
    this.workers.forEach((w) => w.terminate());
  }

  /** Copies the model's weights into the buffer the workers read them from. */
  private writeWeights(model: UNet) {
    const all = new Float32Array(this.weights);
    for (const { w, at } of flatWeights(model)) all.set(heapOf(w), at);
    this.synced = model;
  }

  /** Sends each worker but this thread's first share its rows of `images`, t and labels; returns the links used. */
  private post(
    what: number,
    parts: [number, number][],
    images: Tensor4D[],
    t: Tensor1D,
    labels: Tensor1D | null,
    newWeights: boolean,
    lossWeights: Tensor1D | null = null,
  ): Link[] {
    const [n, h, w, c] = images[0].shape, pixels = h * w * c; // (square images: h = w)
    const data = images.map((x) => x.dataSync() as Float32Array);
    const tData = t.dataSync(), labelData = labels?.dataSync(), weightData = lossWeights?.dataSync();
    const busy = this.links.slice(0, parts.length - 1);
    busy.forEach((link, i) => {
      const [start, end] = parts[i + 1], r = end - start, at = ioLayout(r, pixels, images.length);
      if (link.io.byteLength < 4 * at.end) link.io.grow(4 * at.end);
      const io = new Float32Array(link.io);
      data.forEach((d, j) => io.set(d.subarray(start * pixels, end * pixels), j * r * pixels));
      io.set(tData.subarray(start, end), at.t);
      if (labelData) io.set(labelData.subarray(start, end), at.labels);
      if (weightData) io.set(weightData.subarray(start, end), at.lossWeights);
      const slots = new Int32Array(link.control);
      slots[SLOT.rows] = r;
      slots[SLOT.size] = h;
      slots[SLOT.hasLabels] = labels ? 1 : 0;
      slots[SLOT.hasLossWeights] = lossWeights ? 1 : 0;
      slots[SLOT.newWeights] = newWeights ? 1 : 0;
      new Float32Array(link.control)[NUMBER.share] = r / n;
      notify(link, what);
    });
    return busy;
  }

  /** Blocks until each worker has done its request; throws a worker's error. */
  private wait(busy: Link[]) {
    busy.forEach((link, i) => {
      const slots = new Int32Array(link.control);
      for (let d = Atomics.load(slots, SLOT.done); d !== Atomics.load(slots, SLOT.request); d = slots[SLOT.done]) {
        Atomics.wait(slots, SLOT.done, d);
      }
      if (!slots[SLOT.errorBytes]) return;
      const message = new TextDecoder().decode(new Uint8Array(link.control, ERROR_AT, slots[SLOT.errorBytes]).slice());
      slots[SLOT.errorBytes] = 0;
      throw new Error(`thread ${i + 2}: ${message}`);
    });
  }
}

/** A tensor's floats where the wasm backend holds them (no copy; valid until the next allocation). */
const heapOf = (x: tf.Tensor) =>
  (tf.backend() as unknown as { typedArrayFromHeap(x: tf.Tensor): Float32Array }).typedArrayFromHeap(x);

/** `next`, after disposing `old`. */
function replace<X extends tf.Tensor>(old: tf.Tensor, next: X): X {
  old.dispose();
  return next;
}

/** Wakes a worker with a command. */
function notify(link: Link, what: number) {
  const slots = new Int32Array(link.control);
  slots[SLOT.command] = what;
  Atomics.add(slots, SLOT.request, 1);
  Atomics.notify(slots, SLOT.request);
}

// ------------------------------------------------------------------ a worker

/** A worker's life: the wasm backend and a U-Net, then one command after another until QUIT. */
async function serve({ shape, link, weights }: { shape: UNetOptions; link: Link; weights: SharedArrayBuffer }) {
  await setBackend("wasm", () => {});
  const model = new UNet(shape);
  scope.postMessage("ready");
  const slots = new Int32Array(link.control);
  for (let seen = 0;;) {
    Atomics.wait(slots, SLOT.request, seen);
    seen = Atomics.load(slots, SLOT.request);
    if (slots[SLOT.command] === QUIT) break;
    try {
      if (slots[SLOT.newWeights]) readWeights(model, weights);
      tf.tidy(() => work(model, link));
    } catch (e) {
      const bytes = new TextEncoder().encode(e instanceof Error ? e.message : String(e)).slice(0, ERROR_MAX);
      new Uint8Array(link.control, ERROR_AT).set(bytes);
      slots[SLOT.errorBytes] = bytes.length;
    }
    Atomics.store(slots, SLOT.done, seen);
    Atomics.notify(slots, SLOT.done);
  }
  scope.close();
}

/** A worker's command: ε_θ of its rows (FORWARD), or their loss and gradients (GRADIENTS), written to the link. */
function work(model: UNet, link: Link) {
  const slots = new Int32Array(link.control), numbers = new Float32Array(link.control);
  const r = slots[SLOT.rows], s = slots[SLOT.size], pixels = s * s * 3, io = new Float32Array(link.io);
  const forward = slots[SLOT.command] === FORWARD, at = ioLayout(r, pixels, forward ? 1 : 2);
  const image = (j: number) => tf.tensor4d(io.subarray(j * r * pixels, (j + 1) * r * pixels), [r, s, s, 3]);
  const ints = (from: number) => tf.tensor1d(Int32Array.from(io.subarray(from, from + r)), "int32");
  const t = ints(at.t), labels = slots[SLOT.hasLabels] ? ints(at.labels) : null;
  if (forward) return io.set(model.forward(image(0), t, labels).dataSync(), at.out);
  const lossWeights = slots[SLOT.hasLossWeights] ? tf.tensor1d(io.slice(at.lossWeights, at.lossWeights + r)) : null;
  const { value, grads } = lossGradients(model, image(0), t, image(1), lossWeights, labels, numbers[NUMBER.share]);
  numbers[NUMBER.loss] = value.dataSync()[0];
  const all = new Float32Array(link.grads);
  for (const { name, at } of flatWeights(model)) {
    const g = grads.get(name);
    if (g) all.set(heapOf(g), at);
  }
}

function readWeights(model: UNet, weights: SharedArrayBuffer) {
  const all = new Float32Array(weights);
  for (const { w, at } of flatWeights(model)) {
    tf.tidy(() => w.assign(tf.tensor(all.subarray(at, at + w.size), w.shape)));
  }
}

if (scope.name === NAME) {
  scope.onmessage = (e) => serve(e.data).catch((err) => scope.postMessage(String(err?.message ?? err)));
}
