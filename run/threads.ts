// Every core on a CPU: data parallel in one process. Each extra thread is a worker with its own wasm backend and a
// copy of the U-Net; a step shares its batch among the threads (this one takes the first rows), each computes the
// forward and backward of its rows, and then each updates its share of the weights (owners): it sums their gradients
// over the threads, clips them by the norm of all of them and runs AdamW on them, with their moments, which it keeps.
// Every thread then takes the others' new weights. The step is the same computation as on one thread, up to the
// order of float additions. The threads meet through SharedArrayBuffers and Atomics, so forward() and step() are
// synchronous, as tfjs's own ops are. This file is also the workers' script (new Worker(import.meta.url)).
import * as tf from "@tensorflow/tfjs";
import { type Scalar, setBackend, type Tensor, type Tensor1D, type Tensor4D } from "../kernels/backend.ts";
import { type NoiseModel, simpleLoss } from "../diffusion.ts";
import { type AdamWStep, fusedAdamW } from "../kernels/fused.ts";
import { clipScale, sumsOfSquares } from "../kernels/fused_wasm.ts";
import { blasNote } from "../kernels/native.ts";
import { type Module, UNet, type UNetOptions } from "../modules.ts";
import type { AdamW } from "./adamw.ts";

/** A step's loss and the gradients of its weights, by name. */
export type LossGradients = { value: Scalar; grads: Map<string, Tensor> };

/** The loss of Algorithm 1 (diffusion.ts's simpleLoss) and its gradients by weight name, times `share`. */
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
    const loss = simpleLoss(model, xt, t, target, lossWeights, labels);
    return share === 1 ? loss : loss.mul(share);
  }, weights);
  // (a weight the step did not use has none: the label embedding on an unconditional step)
  const used = [...model.weights].filter(([, w]) => grads[w.name]);
  return { value, grads: new Map(used.map(([name, w]) => [name, grads[w.name]])) };
}

/** opt's update from a step's gradients, which it frees; the step's loss. */
export function descend(opt: AdamW, { value, grads }: LossGradients): Scalar {
  opt.update(grads);
  tf.dispose([...grads.values()]);
  return value;
}

/** The threads a backend runs on: on wasm, `requested` (0: every core); the others have their own. */
export const threadCount = (backend: string, requested: number) =>
  backend === "wasm" ? requested || navigator.hardwareConcurrency || 1 : 1;

/** A log line's words for a backend and its threads (on wasm: what its products run on, kernels/native.ts). */
export const describeThreads = (backend: string, count: number) =>
  `backend ${backend}, ${count} thread${count > 1 ? "s" : ""}${backend === "wasm" ? `, ${blasNote}` : ""}`;

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
  moment: 11, // MOMENTS_IN, MOMENTS_OUT: 0 m, 1 v
};
/** Its two numbers: Float32 indices into the same buffer. */
const NUMBER = { share: 8, loss: 9 };
const ERROR_AT = 64;
const ERROR_MAX = 960;
const FORWARD = 1;
const GRADIENTS = 2;
const STEP = 3;
const MOMENTS_IN = 4;
const MOMENTS_OUT = 5;
const QUIT = 6;

/** What the main thread and one worker share: the control slots, the rows in and out. */
interface Link {
  control: SharedArrayBuffer;
  io: SharedArrayBuffer; // growable: see ioLayout
}

/** What all the threads share. Flat arrays of every weight are in model.weights' order (flatWeights). */
interface Shared {
  weights: SharedArrayBuffer; // every weight, flat
  grads: SharedArrayBuffer[]; // thread i's gradients, flat (of the weights the others own, on a STEP; i = 0: this one)
  settings: SharedArrayBuffer; // a STEP's AdamW settings (Float64, in SETTINGS' order)
  sums: SharedArrayBuffer; // each weight's sum of squares of its gradient (Float32, by weight), for the clip's norm
  meet: SharedArrayBuffer; // Int32: the threads' arrivals in this step (meet), and 1 once one has stopped
}
const SETTINGS = ["lr", "beta1", "beta2", "eps", "weightDecay", "c1", "c2", "maxGradNorm"] as const;

/** Thrown in a thread that meets the others when one of them has stopped with an error. */
class Stopped extends Error {}

/** Waits until all `count` threads have come here `k` times in this step; throws Stopped if one has stopped. */
function meet(shared: Shared, count: number, k: number) {
  const state = new Int32Array(shared.meet);
  Atomics.add(state, 0, 1);
  Atomics.notify(state, 0);
  for (let n = Atomics.load(state, 0); n < count * k && !state[1]; n = Atomics.load(state, 0)) {
    Atomics.wait(state, 0, n, 1000); // (the timeout: a stop between the check and the wait)
  }
  if (Atomics.load(state, 1)) throw new Stopped("another thread stopped");
}

/** Tells the threads that meet that one has stopped. */
function stop(shared: Shared) {
  const state = new Int32Array(shared.meet);
  Atomics.store(state, 1, 1);
  Atomics.notify(state, 0);
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
function* flatWeights(model: Module) {
  let at = 0;
  for (const [name, w] of model.weights) {
    yield { name, w, at };
    at += w.size;
  }
}

/** The thread (of `count`) that updates each weight of `model`, in its order: contiguous, about as many floats each. */
export function owners(model: Module, count: number): number[] {
  const total = model.parameterCount;
  return [...flatWeights(model)].map(({ w, at }) => Math.min(count - 1, Math.floor(count * (at + w.size / 2) / total)));
}

/**
 * A thread's part of a STEP, after the gradients of its rows (`grads`, by name; the sums land in them): the gradients
 * of the weights the other threads own go out, those of its own are summed over the threads, clipped by the norm of
 * them all if the settings say so, and AdamW updates them with their moments; its new weights go out, the others' in.
 */
function updateShare(
  model: UNet,
  grads: Map<string, Tensor>,
  moments: Moments,
  me: number,
  count: number,
  shared: Shared,
) {
  const owner = owners(model, count);
  const flat = [...flatWeights(model)].map((f, i) => ({ ...f, i, g: grads.get(f.name)! })).filter((f) => f.g);
  const mine = flat.filter((f) => owner[f.i] === me), theirs = flat.filter((f) => owner[f.i] !== me);
  const out = new Float32Array(shared.grads[me]);
  for (const { g, at } of theirs) out.set(heapOf(g), at);
  meet(shared, count, 1);
  for (const { g, at, w } of mine) { // added in place: a step's gradients are its own tensors
    const G = heapOf(g);
    for (let t = 0; t < count; t++) {
      if (t === me) continue;
      const other = new Float32Array(shared.grads[t], 4 * at, w.size);
      for (let e = 0; e < G.length; e++) G[e] += other[e];
    }
  }
  const settings = new Float64Array(shared.settings);
  const s = Object.fromEntries(SETTINGS.map((k, i) => [k, settings[i]])) as unknown as AdamWStep;
  let scale: number | undefined; // (none: the plain AdamW kernel)
  if (s.maxGradNorm) { // clipByGlobalNorm's float32 sums: each weight's, then theirs in the weights' order
    const sums = new Float32Array(shared.sums);
    sumsOfSquares(mine.map((f) => heapOf(f.g))).forEach((sum, k) => sums[mine[k].i] = sum);
    meet(shared, count, 2);
    scale = clipScale(flat.map((f) => sums[f.i]), s.maxGradNorm);
  }
  const params = mine.map(({ name, w, g }) => ({ w, m: moments.m.get(name)!, v: moments.v.get(name)!, g }));
  fusedAdamW(params, { ...s, maxGradNorm: 0, scale });
  const all = new Float32Array(shared.weights);
  for (const { w, at } of mine) all.set(heapOf(w), at);
  meet(shared, count, s.maxGradNorm ? 3 : 2);
  for (const { w, at } of theirs) tf.tidy(() => w.assign(tf.tensor(all.subarray(at, at + w.size), w.shape)));
}

/** AdamW's moments, by weight name. */
type Moments = { m: Map<string, tf.Variable>; v: Map<string, tf.Variable> };

/** The rows of a batch of n that each of `count` threads takes: [start, end), none empty. */
export function shares(n: number, count: number): [number, number][] {
  const k = Math.min(n, count);
  return Array.from({ length: k }, (_, i) => [Math.floor(i * n / k), Math.floor((i + 1) * n / k)]);
}

/** Rows [start, end) of a batch. */
const rows = <X extends tf.Tensor>(x: X, [start, end]: [number, number]): X => x.slice(start, end - start) as X;

/** A pool of threads for U-Nets of one shape: this thread and count - 1 workers. */
export class Threads {
  private synced: UNet | null = null; // the model whose weights the workers hold (a step keeps them in step)
  private moments: AdamW | null = null; // the optimizer whose moments of their weights the workers hold
  private constructor(
    readonly count: number,
    private readonly workers: Worker[],
    private readonly links: Link[],
    private readonly shared: Shared,
  ) {}

  /** `count` threads in all (count - 1 workers, each loading the wasm backend) for models shaped like `model`. */
  static async start(count: number, model: UNet): Promise<Threads> {
    const { width, timeDim, numClasses, removeDeepConv } = model;
    const shape: UNetOptions = { width, timeDim, numClasses, removeDeepConv };
    const bytes = 4 * model.parameterCount;
    const shared: Shared = {
      weights: new SharedArrayBuffer(bytes),
      grads: Array.from({ length: count }, () => new SharedArrayBuffer(bytes)),
      settings: new SharedArrayBuffer(8 * SETTINGS.length),
      sums: new SharedArrayBuffer(4 * model.weights.size),
      meet: new SharedArrayBuffer(8),
    };
    const links = Array.from({ length: count - 1 }, () => ({
      control: new SharedArrayBuffer(ERROR_AT + ERROR_MAX),
      io: new SharedArrayBuffer(0, { maxByteLength: 2 ** 31 }),
    }));
    const workers = links.map(() => new Worker(import.meta.url, { type: "module", name: NAME }));
    const ready = workers.map((w, i) =>
      new Promise<void>((resolve, reject) => {
        w.onmessage = (e) => e.data === "ready" ? resolve() : reject(new Error(`thread ${i + 2}: ${e.data}`));
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`thread ${i + 2}: ${e.message}`));
        };
        w.postMessage({ shape, link: links[i], shared, me: i + 1, count });
      })
    );
    await Promise.all(ready).catch((e) => {
      workers.forEach((w) => w.terminate());
      throw e;
    });
    return new Threads(count, workers, links, shared);
  }

  /** ε_θ(x, t, y), the rows shared among the threads. The workers load `model`'s weights when they hold another's. */
  forward(model: UNet, x: Tensor4D, t: Tensor1D, labels: Tensor1D | null): Tensor4D {
    const parts = shares(x.shape[0], this.count);
    if (parts.length === 1) return model.forward(x, t, labels);
    const busy = this.post(FORWARD, parts, [x], t, labels, this.sync(model));
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

  /** lossGradients of the whole batch: each thread's share, the gradients summed here. */
  lossGradients(
    model: UNet,
    xt: Tensor4D,
    t: Tensor1D,
    target: Tensor4D,
    lossWeights: Tensor1D | null,
    labels: Tensor1D | null,
  ): LossGradients {
    const parts = shares(xt.shape[0], this.count);
    const newWeights = parts.length > 1 && this.sync(model);
    this.synced = null; // (an update of the weights is what gradients are for)
    if (parts.length === 1) return lossGradients(model, xt, t, target, lossWeights, labels);
    const busy = this.post(GRADIENTS, parts, [xt, target], t, labels, newWeights, lossWeights);
    const { value, grads } = this.mine(model, parts, [xt, t, target, lossWeights, labels]);
    this.wait(busy);
    const offsets = new Map([...flatWeights(model)].map(({ name, at }) => [name, at]));
    busy.forEach((_, i) => {
      const theirs = new Float32Array(this.shared.grads[i + 1]);
      for (const [name, g] of grads) { // added in place: a step's gradients are its own tensors
        const mineG = heapOf(g), at = offsets.get(name)!;
        for (let e = 0; e < mineG.length; e++) mineG[e] += theirs[at + e];
      }
    });
    return { value: this.addLosses(value, busy), grads };
  }

  /**
   * Algorithm 1's gradient step on the whole batch, shared: each thread the loss gradients of its rows, then the sum,
   * clipping and AdamW of the weights it owns (updateShare). The batch's loss. The workers keep the moments of their
   * weights from one step to the next (momentsInto brings them back into `opt`); a batch of fewer rows than threads
   * takes one AdamW here.
   */
  step(
    model: UNet,
    opt: AdamW,
    xt: Tensor4D,
    t: Tensor1D,
    target: Tensor4D,
    lossWeights: Tensor1D | null,
    labels: Tensor1D | null,
  ): Scalar {
    const parts = shares(xt.shape[0], this.count);
    if (parts.length < this.count) {
      this.holdMoments(null);
      return descend(opt, this.lossGradients(model, xt, t, target, lossWeights, labels));
    }
    this.holdMoments(opt);
    const newWeights = this.sync(model), s = opt.nextStep();
    new Float64Array(this.shared.settings).set(SETTINGS.map((k) => s[k] ?? 0));
    new Int32Array(this.shared.meet).fill(0);
    const busy = this.post(STEP, parts, [xt, target], t, labels, newWeights, lossWeights);
    let mine: LossGradients | null = null;
    try {
      mine = this.mine(model, parts, [xt, t, target, lossWeights, labels]);
      updateShare(model, mine.grads, opt, 0, this.count, this.shared);
    } catch (e) {
      stop(this.shared);
      this.synced = null; // (some threads may have updated their weights, some not)
      mine?.value.dispose();
      this.wait(busy); // (a worker's error first: it is why this thread stopped)
      throw e;
    } finally {
      if (mine) tf.dispose([...mine.grads.values()]);
    }
    this.wait(busy);
    return this.addLosses(mine.value, busy);
  }

  /** The workers' moments of the weights they own, written into `opt`'s (for a checkpoint), if they hold opt's. */
  momentsInto(opt: AdamW) {
    if (this.moments === opt) this.moveMoments(opt, MOMENTS_OUT);
  }

  /** Ends the workers. */
  close() {
    for (const link of this.links) notify(link, QUIT);
    this.workers.forEach((w) => w.terminate());
  }

  /** This thread's rows of a step (x_t, t, the target, the loss weights, labels): their loss and gradients, weighted. */
  private mine(model: UNet, parts: [number, number][], batch: (tf.Tensor | null)[]): LossGradients {
    const [start, end] = parts[0], n = batch[0]!.shape[0];
    const given = batch.map((x) => x && rows(x, parts[0]));
    const [x, tRows, targetRows, w, y] = given as [Tensor4D, Tensor1D, Tensor4D, Tensor1D | null, Tensor1D | null];
    const result = lossGradients(model, x, tRows, targetRows, w, y, (end - start) / n);
    tf.dispose(given.filter((r) => r !== null));
    return result;
  }

  /** `value` plus the workers' losses. */
  private addLosses(value: Scalar, busy: Link[]): Scalar {
    for (const link of busy) value = replace(value, value.add(new Float32Array(link.control)[NUMBER.loss]));
    return value;
  }

  /** Copies the model's weights where the workers read them, unless they hold them; whether they must read them. */
  private sync(model: UNet): boolean {
    if (this.synced === model) return false;
    const all = new Float32Array(this.shared.weights);
    for (const { w, at } of flatWeights(model)) all.set(heapOf(w), at);
    this.synced = model;
    return true;
  }

  /** Makes the workers hold `opt`'s moments of their weights (or none), giving back those of the optimizer they held. */
  private holdMoments(opt: AdamW | null) {
    if (this.moments === opt) return;
    if (this.moments) this.moveMoments(this.moments, MOMENTS_OUT);
    if (opt) this.moveMoments(opt, MOMENTS_IN);
    this.moments = opt;
  }

  /** opt's m and v of the weights the workers own: to them (MOMENTS_IN) or back from them (MOMENTS_OUT). */
  private moveMoments(opt: AdamW, command: number) {
    const owner = owners(opt.model, this.count);
    const theirs = [...flatWeights(opt.model)].map((f, i) => ({ ...f, owner: owner[i] })).filter((f) => f.owner);
    const at = (f: typeof theirs[number]) => new Float32Array(this.shared.grads[f.owner], 4 * f.at, f.w.size);
    [opt.m, opt.v].forEach((moments, k) => {
      if (command === MOMENTS_IN) theirs.forEach((f) => at(f).set(heapOf(moments.get(f.name)!)));
      for (const link of this.links) {
        new Int32Array(link.control)[SLOT.moment] = k;
        notify(link, command);
      }
      this.wait(this.links);
      if (command === MOMENTS_IN) return;
      theirs.forEach((f) => tf.tidy(() => moments.get(f.name)!.assign(tf.tensor(at(f), f.w.shape))));
    });
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
    let error: Error | null = null;
    busy.forEach((link, i) => {
      const slots = new Int32Array(link.control);
      for (let d = Atomics.load(slots, SLOT.done); d !== Atomics.load(slots, SLOT.request); d = slots[SLOT.done]) {
        Atomics.wait(slots, SLOT.done, d);
      }
      if (!slots[SLOT.errorBytes]) return;
      const message = new TextDecoder().decode(new Uint8Array(link.control, ERROR_AT, slots[SLOT.errorBytes]).slice());
      slots[SLOT.errorBytes] = 0;
      error ??= new Error(`thread ${i + 2}: ${message}`);
    });
    if (error) throw error;
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

/** What a worker is given at its start: the U-Net's shape, its link, what all share, its number and the count. */
type Start = { shape: UNetOptions; link: Link; shared: Shared; me: number; count: number };

/** A worker's life: the wasm backend and a U-Net, then one command after another until QUIT. */
async function serve(start: Start) {
  await setBackend("wasm", () => {});
  const model = new UNet(start.shape);
  const moments: Moments = { m: new Map(), v: new Map() }; // of the weights it owns, once MOMENTS_IN has brought them
  scope.postMessage("ready");
  const slots = new Int32Array(start.link.control);
  for (let seen = 0;;) {
    Atomics.wait(slots, SLOT.request, seen);
    seen = Atomics.load(slots, SLOT.request);
    if (slots[SLOT.command] === QUIT) break;
    try {
      if (slots[SLOT.newWeights]) readWeights(model, start.shared.weights);
      slots[SLOT.newWeights] = 0;
      tf.tidy(() => work(model, moments, start));
    } catch (e) {
      if (!(e instanceof Stopped)) { // (stopped by another thread's error: that one says why)
        stop(start.shared);
        const bytes = new TextEncoder().encode(e instanceof Error ? e.message : String(e)).slice(0, ERROR_MAX);
        new Uint8Array(start.link.control, ERROR_AT).set(bytes);
        slots[SLOT.errorBytes] = bytes.length;
      }
    }
    Atomics.store(slots, SLOT.done, seen);
    Atomics.notify(slots, SLOT.done);
  }
  scope.close();
}

/**
 * A worker's command: ε_θ of its rows (FORWARD); their loss and gradients (GRADIENTS), or those and then its share of
 * the update (STEP); the moments of its weights in or out (MOMENTS_IN, MOMENTS_OUT).
 */
function work(model: UNet, moments: Moments, { link, shared, me, count }: Start) {
  const slots = new Int32Array(link.control), numbers = new Float32Array(link.control), command = slots[SLOT.command];
  if (command === MOMENTS_IN || command === MOMENTS_OUT) {
    return copyMoments(model, moments, slots[SLOT.moment], command, me, count, shared);
  }
  const r = slots[SLOT.rows], s = slots[SLOT.size], pixels = s * s * 3, io = new Float32Array(link.io);
  const at = ioLayout(r, pixels, command === FORWARD ? 1 : 2);
  const image = (j: number) => tf.tensor4d(io.subarray(j * r * pixels, (j + 1) * r * pixels), [r, s, s, 3]);
  const ints = (from: number) => tf.tensor1d(Int32Array.from(io.subarray(from, from + r)), "int32");
  const t = ints(at.t), labels = slots[SLOT.hasLabels] ? ints(at.labels) : null;
  if (command === FORWARD) return io.set(model.forward(image(0), t, labels).dataSync(), at.out);
  const lossWeights = slots[SLOT.hasLossWeights] ? tf.tensor1d(io.slice(at.lossWeights, at.lossWeights + r)) : null;
  const { value, grads } = lossGradients(model, image(0), t, image(1), lossWeights, labels, numbers[NUMBER.share]);
  numbers[NUMBER.loss] = value.dataSync()[0];
  if (command === STEP) return updateShare(model, grads, moments, me, count, shared);
  const all = new Float32Array(shared.grads[me]);
  for (const { name, at } of flatWeights(model)) {
    const g = grads.get(name);
    if (g) all.set(heapOf(g), at);
  }
}

/** Moments `which` (0: m, 1: v) of the weights this worker owns, from shared.grads[me] (MOMENTS_IN) or to it (OUT). */
function copyMoments(
  model: UNet,
  moments: Moments,
  which: number,
  command: number,
  me: number,
  count: number,
  shared: Shared,
) {
  const owner = owners(model, count), all = new Float32Array(shared.grads[me]), map = which ? moments.v : moments.m;
  [...flatWeights(model)].forEach(({ name, w, at }, i) => {
    if (owner[i] !== me) return;
    if (command === MOMENTS_OUT) return all.set(heapOf(map.get(name)!), at);
    const value = tf.tensor(all.subarray(at, at + w.size), w.shape);
    if (map.has(name)) map.get(name)!.assign(value);
    else map.set(name, tf.variable(value, false));
  });
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
