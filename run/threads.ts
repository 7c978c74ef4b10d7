// Every core on a CPU: data parallel in one process. Each extra thread is a worker with its own wasm backend and a
// copy of the U-Net; a step shares its batch among the threads (this one takes the first rows), each computes the
// forward (and backward) of its rows, and the gradients are summed here, where the one AdamW and the EMA run. The
// step is the same computation as on one thread, up to the order of float additions. The threads meet through
// SharedArrayBuffers and Atomics, so forward() and lossGradients() are synchronous, as tfjs's own ops are.
// This file is also the workers' script (new Worker(import.meta.url)).
import * as tf from "@tensorflow/tfjs";
import { setBackend } from "../kernels/backend.ts";
import type { NoiseModel } from "../diffusion.ts";
import { UNet, type UNetOptions } from "../modules.ts";

/** The loss of Algorithm 1, ‖ε - ε_θ(x_t, t)‖² (its mean), and its gradients by weight name, times `share`. */
export function lossGradients(
  model: UNet,
  xt: tf.Tensor4D,
  t: tf.Tensor1D,
  noise: tf.Tensor4D,
  labels: tf.Tensor1D | null,
  share = 1, // the share of the batch these rows are: their mean loss, weighted, adds up to the batch's
) {
  const weights = [...model.weights.values()];
  const { value, grads } = tf.variableGrads(() => {
    const loss = tf.losses.meanSquaredError(noise, model.forward(xt, t, labels)) as tf.Scalar;
    return share === 1 ? loss : loss.mul(share);
  }, weights);
  const byName = new Map([...model.weights].map(([name, w]) => [name, grads[w.name]]));
  return { value, grads: byName };
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
// the slots of a worker's control array (Int32), then a Float32 view on the same buffer for the two numbers
const [REQUEST, DONE, COMMAND, ROWS, SIZE, HAS_LABELS, NEW_WEIGHTS, ERROR_BYTES] = [0, 1, 2, 3, 4, 5, 6, 7];
const [SHARE, LOSS] = [8, 9];
const CONTROL_BYTES = 64, ERROR_AT = 64, ERROR_MAX = 960;
const [FORWARD, GRADIENTS, QUIT] = [1, 2, 3];

/** What the main thread and one worker share: the control slots, the rows in and out, the gradients. */
interface Link {
  control: SharedArrayBuffer; // CONTROL_BYTES of slots, then an error message
  io: SharedArrayBuffer; // growable: x [, ε], t, labels [, the output]
  grads: SharedArrayBuffer; // every weight's gradient, in model.weights' order
}

/** The rows of a batch of n that each of `count` threads takes: [start, end), none empty. */
export function shares(n: number, count: number): [number, number][] {
  const k = Math.min(n, count);
  return Array.from({ length: k }, (_, i) => [Math.floor(i * n / k), Math.floor((i + 1) * n / k)]);
}

/** A pool of threads for one U-Net shape: this thread, and count - 1 workers. */
export class Threads {
  private synced: UNet | null = null; // the model whose weights the workers hold
  private constructor(
    readonly count: number,
    private readonly workers: Worker[],
    private readonly links: Link[],
    private readonly weights: SharedArrayBuffer, // every weight, in model.weights' order
  ) {}

  /** `count` threads in all (count - 1 workers, each loading the wasm backend) for models shaped like `model`. */
  static async start(count: number, model: UNet): Promise<Threads> {
    const { width, timeDim, numClasses, removeDeepConv } = model;
    const bytes = 4 * model.parameterCount;
    const weights = new SharedArrayBuffer(bytes);
    const links = Array.from({ length: count - 1 }, () => ({
      control: new SharedArrayBuffer(CONTROL_BYTES + ERROR_MAX),
      io: new SharedArrayBuffer(0, { maxByteLength: 2 ** 31 }),
      grads: new SharedArrayBuffer(bytes),
    }));
    const workers = links.map(() => new Worker(import.meta.url, { type: "module", name: NAME }));
    const shape: UNetOptions = { width, timeDim, numClasses, removeDeepConv };
    await Promise.all(workers.map((w, i) =>
      new Promise<void>((resolve, reject) => {
        w.onmessage = (e) => e.data === "ready" ? resolve() : reject(new Error(`thread ${i + 1}: ${e.data}`));
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`thread ${i + 1}: ${e.message}`));
        };
        w.postMessage({ shape, link: links[i], weights });
      })
    )).catch((e) => {
      workers.forEach((w) => w.terminate());
      throw e;
    });
    return new Threads(count, workers, links, weights);
  }

  /** ε_θ(x, t, y), the rows shared among the threads. The workers reload `model`'s weights when it is another. */
  forward(model: UNet, x: tf.Tensor4D, t: tf.Tensor1D, labels: tf.Tensor1D | null): tf.Tensor4D {
    const parts = shares(x.shape[0], this.count);
    if (parts.length === 1) return model.forward(x, t, labels);
    const newWeights = this.synced !== model;
    if (newWeights) this.writeWeights(model);
    const outputs = this.send(FORWARD, parts, [x], t, labels, newWeights, () => {
      const [start, end] = parts[0];
      return tf.tidy(() => model.forward(rows(x, start, end), rows(t, start, end), labels && rows(labels, start, end)));
    });
    const all = tf.concat(outputs, 0) as tf.Tensor4D;
    tf.dispose(outputs);
    return all;
  }

  /** `model` as a NoiseModel (for sampling) whose forward shares the rows among the threads. */
  noiseModel(model: UNet): NoiseModel {
    return { forward: (x, t, labels) => this.forward(model, x, t, labels ?? null) };
  }

  /** lossGradients over the whole batch: each thread's share, summed here. The workers load `model`'s weights. */
  lossGradients(model: UNet, xt: tf.Tensor4D, t: tf.Tensor1D, noise: tf.Tensor4D, labels: tf.Tensor1D | null) {
    const n = xt.shape[0], parts = shares(n, this.count);
    if (parts.length === 1) return lossGradients(model, xt, t, noise, labels);
    this.writeWeights(model);
    this.synced = null; // the optimizer is about to change them
    let mine!: ReturnType<typeof lossGradients>;
    this.send(GRADIENTS, parts, [xt, noise], t, labels, true, () => {
      const [start, end] = parts[0];
      const mineRows = [xt, t, noise, labels].map((x) => x && rows(x, start, end));
      const [x, tRows, eps, y] = mineRows as [tf.Tensor4D, tf.Tensor1D, tf.Tensor4D, tf.Tensor1D | null];
      mine = lossGradients(model, x, tRows, eps, y, (end - start) / n);
      tf.dispose(mineRows.filter((r) => r !== null));
      return null;
    });
    let { value } = mine;
    const { grads } = mine;
    for (const link of this.links.slice(0, parts.length - 1)) {
      value = replace(value, value.add(new Float32Array(link.control)[LOSS]));
      const all = new Float32Array(link.grads);
      let offset = 0;
      for (const [name, w] of model.weights) {
        const g = grads.get(name);
        if (g) {
          grads.set(
            name,
            replace(g, tf.tidy(() => g.add(tf.tensor(all.subarray(offset, offset + w.size), w.shape)))),
          );
        }
        offset += w.size;
      }
    }
    return { value, grads };
  }

  /** Ends the workers. */
  close() {
    for (const link of this.links) command(link, QUIT);
    this.workers.forEach((w) => w.terminate());
  }

  private writeWeights(model: UNet) {
    const all = new Float32Array(this.weights);
    let offset = 0;
    for (const w of model.weights.values()) {
      all.set(w.dataSync() as Float32Array, offset);
      offset += w.size;
    }
    this.synced = model;
  }

  /**
   * Sends each worker its rows of `inputs`, t and labels, runs `here` (this thread's rows) meanwhile, then waits for
   * them; returns this thread's output and each worker's (FORWARD), as tensors.
   */
  private send(
    what: number,
    parts: [number, number][],
    inputs: tf.Tensor4D[],
    t: tf.Tensor1D,
    labels: tf.Tensor1D | null,
    newWeights: boolean,
    here: () => tf.Tensor4D | null,
  ): tf.Tensor4D[] {
    const [, h, w, c] = inputs[0].shape, pixels = h * w * c, n = inputs[0].shape[0];
    const data = inputs.map((x) => x.dataSync() as Float32Array);
    const tData = t.dataSync(), labelData = labels?.dataSync();
    const busy = this.links.slice(0, parts.length - 1);
    busy.forEach((link, i) => {
      const [start, end] = parts[i + 1], r = end - start;
      const floats = r * pixels * (inputs.length + (what === FORWARD ? 1 : 0)) + 2 * r;
      if (link.io.byteLength < 4 * floats) link.io.grow(4 * floats);
      const io = new Float32Array(link.io);
      data.forEach((d, j) => io.set(d.subarray(start * pixels, end * pixels), j * r * pixels));
      io.set(tData.subarray(start, end), inputs.length * r * pixels);
      if (labelData) io.set(labelData.subarray(start, end), inputs.length * r * pixels + r);
      const slots = new Int32Array(link.control);
      [slots[ROWS], slots[SIZE], slots[HAS_LABELS], slots[NEW_WEIGHTS]] = [r, h, labels ? 1 : 0, newWeights ? 1 : 0];
      new Float32Array(link.control)[SHARE] = r / n;
      command(link, what, false);
    });
    const mine = here();
    busy.forEach((link, i) => awaitDone(link, i + 1));
    if (what !== FORWARD) return [];
    return [
      mine!,
      ...busy.map((link, i) => {
        const [start, end] = parts[i + 1], r = end - start;
        const out = new Float32Array(link.io, 4 * (r * pixels + 2 * r), r * pixels);
        return tf.tensor4d(out, [r, h, w, c]);
      }),
    ];
  }
}

/** `next`, after disposing `old`. */
function replace<X extends tf.Tensor>(old: tf.Tensor, next: X): X {
  old.dispose();
  return next;
}

/** Rows [start, end) of a batch. */
const rows = <X extends tf.Tensor>(x: X, start: number, end: number): X => x.slice(start, end - start) as X;

/** Posts a command to a worker (and by default waits until it is done). */
function command(link: Link, what: number, wait = true) {
  const slots = new Int32Array(link.control);
  slots[COMMAND] = what;
  Atomics.add(slots, REQUEST, 1);
  Atomics.notify(slots, REQUEST);
  if (wait && what !== QUIT) awaitDone(link, 0);
}

/** Blocks until the worker has done its last request; throws its error, if any. */
function awaitDone(link: Link, thread: number) {
  const slots = new Int32Array(link.control);
  for (let done = Atomics.load(slots, DONE); done !== Atomics.load(slots, REQUEST); done = Atomics.load(slots, DONE)) {
    Atomics.wait(slots, DONE, done);
  }
  if (slots[ERROR_BYTES]) {
    const bytes = new Uint8Array(link.control, ERROR_AT, slots[ERROR_BYTES]).slice();
    slots[ERROR_BYTES] = 0;
    throw new Error(`thread ${thread}: ${new TextDecoder().decode(bytes)}`);
  }
}

// ------------------------------------------------------------------ a worker

/** A worker's life: the wasm backend and a U-Net, then one command after another until QUIT. */
async function serve({ shape, link, weights }: { shape: UNetOptions; link: Link; weights: SharedArrayBuffer }) {
  await setBackend("wasm", () => {});
  const model = new UNet(shape);
  scope.postMessage("ready");
  const slots = new Int32Array(link.control), numbers = new Float32Array(link.control);
  for (let seen = 0;;) {
    Atomics.wait(slots, REQUEST, seen);
    seen = Atomics.load(slots, REQUEST);
    if (slots[COMMAND] === QUIT) break;
    try {
      if (slots[NEW_WEIGHTS]) readWeights(model, weights);
      const r = slots[ROWS], s = slots[SIZE], pixels = s * s * 3, io = new Float32Array(link.io);
      const image = (j: number) => tf.tensor4d(io.subarray(j * r * pixels, (j + 1) * r * pixels), [r, s, s, 3]);
      const count = slots[COMMAND] === FORWARD ? 1 : 2, at = count * r * pixels;
      tf.tidy(() => {
        const t = tf.tensor1d(Int32Array.from(io.subarray(at, at + r)), "int32");
        const labels = slots[HAS_LABELS]
          ? tf.tensor1d(Int32Array.from(io.subarray(at + r, at + 2 * r)), "int32")
          : null;
        if (slots[COMMAND] === FORWARD) {
          io.set(model.forward(image(0), t, labels).dataSync(), at + 2 * r);
          return;
        }
        const { value, grads } = lossGradients(model, image(0), t, image(1), labels, numbers[SHARE]);
        numbers[LOSS] = value.dataSync()[0];
        const all = new Float32Array(link.grads);
        let offset = 0;
        for (const [name, w] of model.weights) {
          const g = grads.get(name);
          if (g) all.set(g.dataSync() as Float32Array, offset);
          offset += w.size;
        }
      });
    } catch (e) {
      const bytes = new TextEncoder().encode(e instanceof Error ? e.message : String(e)).slice(0, ERROR_MAX);
      new Uint8Array(link.control, ERROR_AT).set(bytes);
      slots[ERROR_BYTES] = bytes.length;
    }
    Atomics.store(slots, DONE, seen);
    Atomics.notify(slots, DONE);
  }
  scope.close();
}

function readWeights(model: UNet, weights: SharedArrayBuffer) {
  const all = new Float32Array(weights);
  let offset = 0;
  for (const w of model.weights.values()) {
    tf.tidy(() => w.assign(tf.tensor(all.subarray(offset, offset + w.size), w.shape)));
    offset += w.size;
  }
}

if (scope.name === NAME) {
  scope.onmessage = (e) => serve(e.data).catch((err) => scope.postMessage(String(err?.message ?? err)));
}
