// The tutorial's PyTorch weights in and out, .pt/.pth (torch.save) and .safetensors files of its UNet's state_dict.
import * as tf from "@tensorflow/tfjs";
import type { Tensor } from "../kernels/backend.ts";
import { CheckpointError, type Tensors } from "./weights.ts";
import { UNet, type UNetOptions } from "../modules.ts";
import { notFloat32, readPt, writePt } from "./torchsave.ts";

const utf8 = new TextDecoder(), encode = (s: string) => new TextEncoder().encode(s);
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** A state_dict from a `.pt`/`.pth` file (torch.save's zip) or a `.safetensors` file, told apart by their bytes. */
export function readTorchFile(path: string): Tensors {
  const bytes = Deno.readFileSync(path);
  try {
    return parse(path, bytes);
  } catch (e) { // a malformed file that the checks below let through: still one line
    if (e instanceof CheckpointError) throw e;
    throw new CheckpointError(`${path} is not a readable state_dict (${(e as Error).message})`);
  }
}

function parse(path: string, bytes: Uint8Array): Tensors {
  if (bytes[0] === 0x50 && bytes[1] === 0x4b) return readPt(path, bytes); // "PK": a zip
  if (bytes[0] === 0x80 && bytes[1] <= 5) {
    throw new CheckpointError(
      `${path} is in torch.save's legacy format (before PyTorch 1.6): save it again with a newer PyTorch`,
    );
  }
  if (bytes.length > 8 && bytes[8] === 0x7b) return readSafetensors(path, bytes); // "{": a JSON header
  if (bytes.length > 4 && bytes[4] === 0x7b) {
    throw new CheckpointError(`${path} is a weights file of a run folder here: use --run with the run's folder`);
  }
  throw new CheckpointError(`${path} is neither a PyTorch .pt/.pth (zip) nor a .safetensors file`);
}

/**
 * Writes a state_dict as `.safetensors` (with `metadata`, strings, in its header), or as torch.save's zip for any other
 * extension (`.pt`, `.pth`: no metadata).
 */
export async function writeTorchFile(path: string, tensors: Tensors, metadata: Record<string, string> = {}) {
  await Deno.writeFile(path, path.endsWith(".safetensors") ? safetensors(tensors, metadata) : writePt(tensors));
}

/** The metadata of a `.safetensors` file's header (writeTorchFile's); {} for any other file. */
export function torchFileMetadata(path: string): Record<string, string> {
  const file = Deno.openSync(path);
  try {
    const size = new Uint8Array(8);
    if (file.readSync(size) !== 8) return {};
    const n = Number(new DataView(size.buffer).getBigUint64(0, true)), header = new Uint8Array(n);
    if (n > 2 ** 24 || file.readSync(header) !== n || header[0] !== 0x7b) return {}; // not a safetensors header
    return JSON.parse(utf8.decode(header)).__metadata__ ?? {};
  } catch {
    return {};
  } finally {
    file.close();
  }
}

// ------------------------------------------------------------------ the tutorial's layouts

/** The axes that take a weight of ours to PyTorch's layout: conv HWIO → OIHW, Linear [in, out] → [out, in]. */
const torchAxes = (name: string, rank: number) =>
  rank === 4 ? [3, 2, 0, 1] : rank === 2 && name !== "label_emb.weight" ? [1, 0] : null;
const inverse = (axes: number[]) => axes.map((_, i) => axes.indexOf(i));

/** A model's weights as the tutorial's state_dict: its names, PyTorch's layouts. */
export async function torchStateDict(weights: Map<string, Tensor>): Promise<Tensors> {
  const out: Tensors = new Map();
  for (const [name, w] of weights) {
    const axes = torchAxes(name, w.rank), t = axes ? tf.transpose(w, axes) : w.clone();
    out.set(name, { shape: t.shape, values: await t.data() as Float32Array });
    t.dispose();
  }
  return out;
}

/** The tutorial's UNet options from a state_dict's shapes: width, time_dim, class count, and bot2 or not. */
export function torchOptions(path: string, sd: Tensors): Required<UNetOptions> {
  const shape = (key: string) => {
    const t = sd.get(key);
    if (!t) throw new CheckpointError(`${path} has no ${key}: not a state_dict of the tutorial's UNet`);
    return t.shape;
  };
  const [width, channels] = shape("inc.double_conv.0.weight");
  if (channels !== 3) throw new CheckpointError(`${path}: the model takes ${channels} channels; this U-Net takes RGB`);
  return {
    width,
    timeDim: shape("down1.emb_layer.1.weight")[1],
    numClasses: sd.has("label_emb.weight") ? shape("label_emb.weight")[0] : 0,
    removeDeepConv: ![...sd.keys()].some((k) => k.startsWith("bot2.")), // the repository's later variant
  };
}

/**
 * A UNet holding the weights of a PyTorch file of the tutorial's UNet or UNet_conditional; the shapes give its
 * options. A missing, unexpected or mis-shaped key is named. (DDP's "module." prefix is dropped.)
 */
export function loadTorchModel(path: string): UNet {
  const sd: Tensors = new Map([...readTorchFile(path)].map(([k, v]) => [k.replace(/^(module\.|_orig_mod\.)+/, ""), v]));
  const options = torchOptions(path, sd), model = new UNet(options);
  const what = `the tutorial's ${options.numClasses ? "UNet_conditional" : "UNet"} of width ${options.width}`;
  try {
    const extra = [...sd.keys()].filter((k) => !model.weights.has(k));
    if (extra.length) {
      const more = extra.length > 3 ? ` and ${extra.length - 3} more` : "";
      throw new CheckpointError(`${path}: unexpected key ${extra.slice(0, 3).join(", ")}${more} (not in ${what})`);
    }
    for (const [name, v] of model.weights) {
      const t = sd.get(name), axes = torchAxes(name, v.rank), shape = axes ? axes.map((a) => v.shape[a]) : v.shape;
      if (!t) throw new CheckpointError(`${path}: missing key ${name} (of ${what})`);
      if (t.shape.join() !== shape.join()) {
        throw new CheckpointError(`${path}: ${name} has shape [${t.shape}], ${what} needs [${shape}]`);
      }
      tf.tidy(() =>
        v.assign(axes ? tf.tensor(t.values, t.shape).transpose(inverse(axes)) : tf.tensor(t.values, shape))
      );
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

// ------------------------------------------------------------------ safetensors: [u64 n][JSON header, n bytes][data]

function readSafetensors(path: string, bytes: Uint8Array): Tensors {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(dv.getBigUint64(0, true)), out: Tensors = new Map();
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    if (8 + n > bytes.length) throw new Error();
    header = JSON.parse(utf8.decode(bytes.subarray(8, 8 + n)));
  } catch {
    throw new CheckpointError(`${path} is not a readable .safetensors file (bad header: truncated?)`);
  }
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: [begin, end] = [0, -1] } = info;
    if (dtype !== "F32") throw notFloat32(path, name, dtype);
    if (end - begin !== 4 * numel(shape) || 8 + n + end > bytes.length) {
      throw new CheckpointError(`${path}: ${name} lies outside the file (truncated?)`);
    }
    out.set(name, { shape, values: new Float32Array(bytes.slice(8 + n + begin, 8 + n + end).buffer) });
  }
  return out;
}

function safetensors(tensors: Tensors, metadata: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt", ...metadata } };
  let offset = 0;
  for (const [name, { shape }] of tensors) {
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset += 4 * numel(shape)] };
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - json.length % 8) % 8); // the data starts 8-byte aligned
  const out = new Uint8Array(8 + json.length + offset), dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(json.length), true);
  out.set(encode(json), 8);
  let at = 8 + json.length;
  for (const { values } of tensors.values()) {
    out.set(new Uint8Array(values.buffer, values.byteOffset, 4 * values.length), at), at += 4 * values.length;
  }
  return out;
}
