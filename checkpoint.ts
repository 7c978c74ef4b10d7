// Checkpoints: model, EMA and optimizer weights plus the run's state, written so a crash never loses one.
// No node: imports: the run's page (page.ts) bundles this file for the browser to read the weights.
import * as tf from "@tensorflow/tfjs";
import type { Config } from "./cli.ts";

const join = (...parts: string[]) => parts.join("/");
const existsSync = (path: string) => {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
};

/** One file of named float32 tensors: [header length u32][JSON {name: [shape, offset]}][data]. */
export async function saveWeights(path: string, weights: Map<string, tf.Tensor>) {
  const header: Record<string, [number[], number]> = {};
  let offset = 0;
  for (const [name, w] of weights) {
    header[name] = [w.shape, offset];
    offset += w.size;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const data = new Float32Array(offset);
  for (const [name, w] of weights) data.set(await w.data() as Float32Array, header[name][1]);
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    for (const part of [new Uint8Array(new Uint32Array([json.length]).buffer), json, new Uint8Array(data.buffer)]) {
      let written = 0;
      while (written < part.length) written += await file.write(part.subarray(written));
    }
    await file.sync();
  } finally {
    file.close();
  }
}

export type SavedWeights = Map<string, { shape: number[]; values: Float32Array }>;

export function loadWeights(path: string): SavedWeights {
  return parseWeights(Deno.readFileSync(path), path);
}

/** The tensors of a weights file's bytes (`path` names it in errors). */
export function parseWeights(bytes: Uint8Array, path: string): SavedWeights {
  const n = bytes.length >= 4 ? new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true) : Infinity;
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
    out.set(name, { shape, values });
  }
  return out;
}

export class CheckpointError extends Error {}

/** Assigns saved weights (the file at `path`, or its tensors) to variables, refusing any mismatch of names or shapes. */
export function assignWeights(path: string, variables: Map<string, tf.Variable>, saved = loadWeights(path)) {
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
    for (const [name, weights] of files) await saveWeights(join(tmp, name), weights);
    await Deno.writeTextFile(join(tmp, "state.json"), JSON.stringify(state, null, 1));
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
