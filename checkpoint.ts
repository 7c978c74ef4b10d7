// Checkpoints: model, EMA and optimizer weights plus the run's state, written so a crash never loses one.
import * as tf from "@tensorflow/tfjs";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { Config } from "./cli.ts";

/** Named float32 tensors, read from or for a file. */
export type Tensors = Map<string, { shape: number[]; values: Float32Array }>;

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** One file of named float32 tensors: [header length u32][JSON {name: [shape, offset]}][data]. Returns its SHA-256. */
export async function saveWeights(path: string, weights: Map<string, tf.Tensor>): Promise<string> {
  const header: Record<string, [number[], number]> = {};
  let offset = 0;
  for (const [name, w] of weights) {
    header[name] = [w.shape, offset];
    offset += w.size;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const bytes = new Uint8Array(4 + json.length + 4 * offset);
  new DataView(bytes.buffer).setUint32(0, json.length, true);
  bytes.set(json, 4);
  for (const [name, w] of weights) {
    const values = await w.data() as Float32Array;
    bytes.set(
      new Uint8Array(values.buffer, values.byteOffset, 4 * values.length),
      4 + json.length + 4 * header[name][1],
    );
  }
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    let written = 0;
    while (written < bytes.length) written += await file.write(bytes.subarray(written));
    await file.sync();
  } finally {
    file.close();
  }
  return sha256(bytes);
}

/**
 * A weights file's tensors. A file listed in its folder's state.json (`sha256`) must have the digest recorded when it
 * was written; weights named as before the tutorial's names (`down.0.conv1.conv1.weight`) are renamed as they are read.
 */
export function loadWeights(path: string): Tensors {
  const bytes = Deno.readFileSync(path);
  const expected = recordedSha256(path);
  if (expected && sha256(bytes) !== expected) {
    throw new CheckpointError(`${path} has changed since it was written (its SHA-256 is not the one in state.json)`);
  }
  const n = bytes.length >= 4 ? new DataView(bytes.buffer).getUint32(0, true) : Infinity;
  let header: Record<string, [number[], number]>;
  try {
    if (4 + n > bytes.length) throw new Error();
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n)));
  } catch {
    throw new CheckpointError(`${path} is not a weights file (bad header)`);
  }
  const start = 4 + n, out = new Map();
  for (const [name, [shape, offset]] of Object.entries(header)) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (start + 4 * (offset + size) > bytes.length) throw new CheckpointError(`${path} is truncated`);
    const values = new Float32Array(bytes.slice(start + 4 * offset, start + 4 * (offset + size)).buffer);
    out.set(OLD_NAMES.reduce((n, [old, now]) => n.replace(old, now as string), name), { shape, values });
  }
  return out;
}

/** The SHA-256 that the state.json beside `path` recorded for it (none for older checkpoints and other files). */
function recordedSha256(path: string): string | undefined {
  const state = join(dirname(path), "state.json");
  if (!existsSync(state)) return undefined;
  try {
    return JSON.parse(readFileSync(state, "utf8")).sha256?.[basename(path)];
  } catch {
    return undefined; // an unreadable state.json is reported by readState
  }
}

/** Our weight names before they were the tutorial's, and theirs now (old run folders load as they are). */
const OLD_NAMES: [RegExp, string | ((...m: string[]) => string)][] = [
  [/^down\.(\d)\.conv(\d)\./, (_, k, i) => `down${+k + 1}.maxpool_conv.${i}.`],
  [/^down\.(\d)\.emb\./, (_, k) => `down${+k + 1}.emb_layer.1.`],
  [/^up\.(\d)\.conv(\d)\./, (_, k, i) => `up${+k + 1}.conv.${+i - 1}.`],
  [/^up\.(\d)\.emb\./, (_, k) => `up${+k + 1}.emb_layer.1.`],
  [/^sa_down\.(\d)\./, (_, k) => `sa${+k + 1}.`],
  [/^sa_up\.(\d)\./, (_, k) => `sa${+k + 4}.`],
  [/^bot\.(\d)\./, (_, k) => `bot${+k + 1}.`],
  [/conv1\.weight$/, "double_conv.0.weight"],
  [/norm1\.(weight|bias)$/, "double_conv.1.$1"],
  [/conv2\.weight$/, "double_conv.3.weight"],
  [/norm2\.(weight|bias)$/, "double_conv.4.$1"],
  [/mha\.in_proj\.(weight|bias)$/, "mha.in_proj_$1"],
  [/\.ff\.(\d)\./, ".ff_self.$1."],
];

export class CheckpointError extends Error {}

/** Assigns saved weights to variables, refusing any mismatch of names or shapes. */
export function assignWeights(path: string, variables: Map<string, tf.Variable>) {
  const saved = loadWeights(path);
  for (const [name, v] of variables) {
    const s = saved.get(name);
    if (!s) throw new CheckpointError(`${path} has no weight ${name}: saved from another model`);
    if (s.shape.join() !== v.shape.join()) {
      throw new CheckpointError(
        `${path}: ${name} has shape [${s.shape}], the model [${v.shape}] (other width/classes?)`,
      );
    }
    tf.tidy(() => v.assign(tf.tensor(s.values, s.shape)));
  }
  if (saved.size !== variables.size) {
    throw new CheckpointError(`${path} holds ${saved.size} weights, the model ${variables.size}`);
  }
}

/**
 * Writes a checkpoint folder atomically: everything goes to `dir.tmp`, then `dir` becomes `dir.old`,
 * `dir.tmp` becomes `dir`, and `dir.old` is removed. A crash at any moment leaves `dir` or `dir.old` whole.
 */
export async function saveCheckpoint(dir: string, files: Map<string, Map<string, tf.Tensor>>, state: object) {
  const tmp = `${dir}.tmp`, old = `${dir}.old`;
  try {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    await Deno.mkdir(tmp, { recursive: true });
    const sha256: Record<string, string> = {}; // checked when a file is read (loadWeights)
    for (const [name, weights] of files) sha256[name] = await saveWeights(join(tmp, name), weights);
    await Deno.writeTextFile(join(tmp, "state.json"), JSON.stringify({ ...state, sha256 }, null, 1));
  } catch (e) { // disk full, no permission…: the previous checkpoint stays as it was
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw new CheckpointError(`could not write a checkpoint to ${tmp} (${(e as Error).message}); ${dir} is kept`);
  }
  if (existsSync(dir)) {
    await Deno.remove(old, { recursive: true }).catch(() => {});
    await Deno.rename(dir, old);
  }
  await Deno.rename(tmp, dir);
  await Deno.remove(old, { recursive: true }).catch(() => {});
}

/** The newest complete checkpoint folder of a run (`checkpoint`, or `checkpoint.old` after a crash). */
export function findCheckpoint(runDir: string, required: string[]): string {
  if (!existsSync(runDir)) throw new CheckpointError(`no run at ${runDir}`);
  for (const dir of ["checkpoint", "checkpoint.old"].map((d) => join(runDir, d))) {
    if (required.every((f) => existsSync(join(dir, f)))) return dir;
  }
  throw new CheckpointError(
    `${runDir} has no complete checkpoint (needs ${required.join(", ")} in ${runDir}/checkpoint)`,
  );
}

/** What a run keeps between sessions, beside the weights. */
export interface RunState {
  config: Config;
  step: number;
  epoch: number;
  stepInEpoch: number;
  seedState: number;
  emaStep: number;
  adamStep: number;
  classes: string[];
  sha256?: Record<string, string>; // of each weights file, as written
  dir?: string; // where it was read from
}

/** The saved state of a run's newest checkpoint that has the `required` files, and that folder (`dir`). */
export async function readState(runDir: string, required = ["state.json", "model.bin"]): Promise<RunState> {
  const dir = findCheckpoint(runDir, required), path = join(dir, "state.json");
  try {
    return { ...JSON.parse(await Deno.readTextFile(path)), dir };
  } catch (e) {
    throw new CheckpointError(`${path} is not readable (${(e as Error).message})`);
  }
}
