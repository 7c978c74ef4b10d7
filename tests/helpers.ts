// What the tests share: a quiet log, tiny run settings, a temporary folder, the command line, image fixtures, and
// seeded tensors with their gradients for the kernel tests.
import assert from "node:assert/strict";
import { join } from "node:path";
import { crc32, deflateSync } from "node:zlib";
import { Image } from "imagescript";
import * as tf from "@tensorflow/tfjs";
import { type Config, DEFAULTS } from "../run/config.ts";
import type { Dataset } from "../utils.ts";

/** A log that drops every line. */
export const quiet = () => {};

/** Run settings that train in seconds: 8 px, width 4, 8 images in batches of 4, 2 epochs, T = 10, on wasm. */
export const tiny = (out: string, over: Partial<Config> = {}): Config => ({
  ...DEFAULTS,
  out,
  name: "run",
  backend: "wasm",
  imageSize: 8,
  width: 4,
  batchSize: 4,
  count: 8,
  epochs: 2,
  noiseSteps: 10,
  sampleEvery: 1000,
  nSamples: 2,
  ...over,
});

/** Runs `fn` with a new temporary folder, removed afterwards. */
export async function withTempDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "ddpm_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// WebGPU's software driver (Mesa's llvmpipe) writes two lines to stderr when XDG_RUNTIME_DIR is not set (a container,
// a CI job): the children the tests run, whose stderr the tests read, inherit this folder.
if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync({ prefix: "ddpm_xdg_" }));

/** The repository's root, where the scripts are. */
export const ROOT = join(import.meta.dirname!, "..");

/** Runs a script of the repository (`deno run -A script ...args`); its exit code and output. */
export async function runScript(script: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: ROOT,
    stdin: "null",
  })
    .output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

/** Reads a child's output until `pattern` matches it: the first group (or the match), or an error if it exits first. */
export async function readUntil(lines: ReadableStreamDefaultReader<string>, pattern: RegExp, what: string) {
  let text = "", m: RegExpMatchArray | null;
  while (!(m = text.match(pattern))) {
    const { value, done } = await lines.read();
    if (done) throw new Error(`${what} exited before printing ${pattern}:\n${text}`);
    text += value;
  }
  return m[1] ?? m[0];
}

/** The answer to a bad input: the exit code, and one line on stderr that names `what`, no stack trace. */
export function assertOneLine(r: { code: number; stderr: string }, code: number, what: string | RegExp) {
  assert.equal(r.code, code, r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.ok(lines[0].startsWith("error: "), lines[0]);
  if (typeof what === "string") assert.ok(lines[0].includes(what), `${lines[0]} should name ${what}`);
  else assert.match(lines[0], what);
}

/** All batches of one epoch, concatenated. */
export function epoch(ds: Dataset, batchSize: number, rand: () => number) {
  const xs: Float32Array[] = [], labels: number[] = [], sizes: number[] = [];
  for (const b of ds.batches(batchSize, rand)) {
    const px = b.x.length / b.n;
    for (let i = 0; i < b.n; i++) xs.push(b.x.slice(i * px, (i + 1) * px));
    labels.push(...b.labels);
    sizes.push(b.n);
  }
  return { xs, labels, sizes };
}

/** A minimal PNG encoder, for the kinds imagescript cannot write. */
export function png(w: number, h: number, depth: number, colorType: number, rows: number[][], plte?: number[]) {
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length), view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const ihdr = new Uint8Array(13), view = new DataView(ihdr.buffer);
  view.setUint32(0, w);
  view.setUint32(4, h);
  ihdr.set([depth, colorType], 8);
  const raw = new Uint8Array(rows.flatMap((r) => [0, ...r])); // filter 0 per row
  const parts = [
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    ...(plte ? [chunk("PLTE", new Uint8Array(plte))] : []),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array()),
  ];
  return new Uint8Array(parts.flatMap((p) => [...p]));
}

/** A w×h image of one RGBA colour, as PNG or JPEG bytes. */
export async function solidImage(w: number, h: number, rgba: number, format: "png" | "jpeg") {
  const img = new Image(w, h).fill(rgba);
  return format === "png" ? await img.encode() : await img.encodeJPEG(95);
}

/** Deterministic values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 31) - 1);
}
/** A tensor of deterministic values in [-1, 1). */
export const rand = (shape: number[], seed: number) => tf.tensor(values(shape.reduce((a, b) => a * b, 1), seed), shape);

/** f's output and its gradients with respect to all inputs (of a random weighting of the output). */
export const withGrads = (f: (...xs: tf.Tensor[]) => tf.Tensor, shapes: number[][], seed = 1) => () => {
  const xs = shapes.map((s, i) => rand(s, seed + i));
  const y = f(...xs);
  const r = rand(y.shape, seed + 99);
  const grads = tf.grads((...ys: tf.Tensor[]) => f(...ys).mul(r).sum())(xs);
  return [y, ...grads];
};
