// The file format of our weights, [u32 header length][JSON {name: [shape, offset]}][float32 data], made, read and
// assigned to a model. No file system here: the run's page (page.ts) reads checkpoints with it in the browser;
// checkpoint.ts writes and reads the files.
import * as tf from "@tensorflow/tfjs";
import type { Tensor, Variable } from "../kernels/backend.ts";

export class CheckpointError extends Error {}

/** Named float32 tensors, read from or for a file. */
export type Tensors = Map<string, { shape: number[]; values: Float32Array }>;

/** The bytes of a weights file. */
export async function serializeWeights(weights: Map<string, Tensor>): Promise<Uint8Array> {
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
  return bytes;
}

/** The tensors of a weights file's bytes (`path` names it in errors); old names are renamed as they are read. */
export function parseWeights(bytes: Uint8Array, path: string): Tensors {
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
    out.set(OLD_NAMES.reduce((n, [old, now]) => n.replace(old, now as string), name), { shape, values });
  }
  return out;
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

/** Assigns saved weights (read from `path`) to variables, refusing any mismatch of names or shapes. */
export function assignTensors(path: string, variables: Map<string, Variable>, saved: Tensors) {
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
