// torch.save's format without Python: a zip of stored entries, `archive/data.pkl` (a pickle) and the raw storages
// `archive/data/<key>`. Only the pickle opcodes and globals of a dict of float32 tensors are read: nothing is run.
import { CheckpointError, type Tensors } from "./weights.ts";

const utf8 = new TextDecoder(), encode = (s: string) => new TextEncoder().encode(s);
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

export const notFloat32 = (path: string, name: string, dtype: string) =>
  new CheckpointError(`${path}: ${name} is ${dtype}; only float32 weights are read (save model.float().state_dict())`);

/** The state_dict in a torch.save file. */
export function readPt(path: string, bytes: Uint8Array): Tensors {
  const files = unzip(path, bytes);
  const pkl = [...files.keys()].find((f) => f.endsWith("data.pkl"));
  if (!pkl) throw new CheckpointError(`${path} is a zip file without data.pkl: not written by torch.save`);
  const dir = pkl.slice(0, -"data.pkl".length);
  if (files.has(dir + "byteorder") && utf8.decode(files.get(dir + "byteorder")) !== "little") {
    throw new CheckpointError(`${path} was written on a big-endian machine`);
  }
  const top = unpickle(path, files.get(pkl)!);
  if (!(top instanceof Map)) throw new CheckpointError(`${path} holds a ${typeName(top)}, not a state_dict`);
  const out: Tensors = new Map(), storages = new Map<string, Float32Array>(); // tensors may share a storage
  for (const [name, t] of top) {
    if (!(t instanceof TensorRef)) {
      const keys = t instanceof Map ? ` (keys ${[...t.keys()].slice(0, 4).join(", ")}…)` : "";
      throw new CheckpointError(`${path}: ${name} is a ${typeName(t)}${keys}, not a tensor: save model.state_dict()`);
    }
    if (t.storage.type !== "FloatStorage") throw notFloat32(path, name, t.storage.type);
    const data = files.get(`${dir}data/${t.storage.key}`);
    if (!data) throw new CheckpointError(`${path}: the data of ${name} is missing`);
    if (!storages.has(t.storage.key)) {
      storages.set(t.storage.key, new Float32Array(data.slice(0, data.length & ~3).buffer));
    }
    out.set(name, { shape: t.shape, values: t.gather(path, name, storages.get(t.storage.key)!) });
  }
  return out;
}

const typeName = (v: unknown) => v instanceof Map ? "dict" : Array.isArray(v) ? "tuple" : typeof v;

/** A tensor of a pickle: `storage` viewed at `offset` with `shape` and `stride` (in elements). */
class TensorRef {
  constructor(
    readonly storage: { type: string; key: string },
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
  gather(path: string, name: string, src: Float32Array): Float32Array {
    const { offset, shape, stride } = this;
    const last = shape.reduce((m, d, i) => m + (d - 1) * stride[i], offset);
    if (numel(shape) && (last >= src.length || offset < 0)) {
      throw new CheckpointError(`${path}: ${name} lies outside its storage (truncated?)`);
    }
    if (stride.every((s, d) => shape[d] === 1 || s === numel(shape.slice(d + 1)))) {
      return src.slice(offset, offset + numel(shape)); // contiguous: the usual case
    }
    const out = new Float32Array(numel(shape));
    for (let i = 0; i < out.length; i++) {
      let rest = i, at = offset;
      for (let d = shape.length - 1; d >= 0; d--) {
        at += (rest % shape[d]) * stride[d], rest = Math.floor(rest / shape[d]);
      }
      out[i] = src[at];
    }
    return out;
  }
}

class Global {
  constructor(readonly name: string) {}
}

/** The globals a state_dict refers to; a pickle naming any other is refused, and nothing in it is ever run. */
const CALLS: Record<string, (args: unknown[]) => unknown> = {
  "collections OrderedDict": () => new Map(),
  "torch._utils _rebuild_tensor_v2": ([storage, offset, shape, stride]) => {
    const ints = (a: unknown) => Array.isArray(a) && a.every(Number.isInteger);
    if (!(storage as { key?: string })?.key || !Number.isInteger(offset) || !ints(shape) || !ints(stride)) {
      throw new Error("a malformed tensor");
    }
    return new TensorRef(
      storage as { type: string; key: string },
      offset as number,
      shape as number[],
      stride as number[],
    );
  },
  "torch._utils _rebuild_parameter": ([data]) => data,
};

/** Reads the subset of Python's pickle (protocols 2-5) that torch.save writes for a dict of tensors. */
function unpickle(path: string, b: Uint8Array): unknown {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength), stack: unknown[] = [], marks: number[] = [];
  const memo = new Map<number, unknown>();
  const bad = (why: string) => new CheckpointError(`${path} is not a PyTorch state_dict (${why})`);
  let p = 0;
  const take = (n: number) => {
    if (p + n > b.length) throw bad("the pickle is truncated");
    return (p += n) - n;
  };
  const str = (n: number) => utf8.decode(b.subarray(take(n), p));
  const line = () => {
    const end = b.indexOf(10, p);
    if (end < 0) throw bad("the pickle is truncated");
    return str(end - p + 1).trim();
  };
  const pop = () => {
    if (!stack.length) throw bad("malformed pickle");
    return stack.pop();
  };
  const popMark = () => {
    const at = marks.pop();
    if (at === undefined) throw bad("malformed pickle");
    return stack.splice(at);
  };
  const global = (name: string) => {
    if (name in CALLS || /^torch \w+Storage$/.test(name)) return new Global(name);
    throw bad(`its pickle refers to ${name.replace(" ", ".")}, which a state_dict does not use; nothing was run`);
  };
  const setItems = (items: unknown[]) => {
    const d = stack.at(-1);
    if (!(d instanceof Map)) throw bad("malformed pickle");
    for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
  };
  while (true) {
    const op = b[take(1)];
    switch (op) {
      case 0x80:
        take(1);
        break; // PROTO
      case 0x95:
        take(8);
        break; // FRAME
      case 0x2e:
        return pop(); // STOP
      case 0x28:
        marks.push(stack.length);
        break; // MARK
      case 0x7d:
        stack.push(new Map());
        break; // EMPTY_DICT
      case 0x29:
        stack.push([]);
        break; // EMPTY_TUPLE
      case 0x74:
        stack.push(popMark());
        break; // TUPLE
      case 0x85:
      case 0x86:
      case 0x87:
        stack.push(stack.splice(stack.length - (op - 0x84)));
        break; // TUPLE1-3
      case 0x4e:
        stack.push(null);
        break; // NONE
      case 0x88:
      case 0x89:
        stack.push(op === 0x88);
        break; // NEWTRUE, NEWFALSE
      case 0x4b:
        stack.push(b[take(1)]);
        break; // BININT1
      case 0x4d:
        stack.push(dv.getUint16(take(2), true));
        break; // BININT2
      case 0x4a:
        stack.push(dv.getInt32(take(4), true));
        break; // BININT
      case 0x8a: { // LONG1: n bytes, little-endian two's complement
        const n = b[take(1)], at = take(n);
        let v = 0;
        for (let i = n - 1; i >= 0; i--) v = v * 256 + b[at + i];
        stack.push(n && b[at + n - 1] >= 0x80 ? v - 2 ** (8 * n) : v);
        break;
      }
      case 0x47:
        stack.push(dv.getFloat64(take(8)));
        break; // BINFLOAT (big-endian)
      case 0x58:
        stack.push(str(dv.getUint32(take(4), true)));
        break; // BINUNICODE
      case 0x8c:
        stack.push(str(b[take(1)]));
        break; // SHORT_BINUNICODE
      case 0x71:
        memo.set(b[take(1)], stack.at(-1));
        break; // BINPUT
      case 0x72:
        memo.set(dv.getUint32(take(4), true), stack.at(-1));
        break; // LONG_BINPUT
      case 0x94:
        memo.set(memo.size, stack.at(-1));
        break; // MEMOIZE
      case 0x68:
        stack.push(memo.get(b[take(1)]));
        break; // BINGET
      case 0x6a:
        stack.push(memo.get(dv.getUint32(take(4), true)));
        break; // LONG_BINGET
      case 0x63:
        stack.push(global(`${line()} ${line()}`));
        break; // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        stack.push(global(`${pop()} ${name}`));
        break;
      }
      case 0x51: { // BINPERSID: ("storage", storage type, key, location, numel)
        const [kind, type, key] = pop() as unknown[];
        if (kind !== "storage" || !(type instanceof Global)) throw bad("an unknown persistent id");
        stack.push({ type: type.name.split(" ")[1], key: String(key) });
        break;
      }
      case 0x52: { // REDUCE: only the calls above, on our own values
        const args = pop() as unknown[], f = pop();
        const call = f instanceof Global && CALLS[f.name];
        if (!call || !Array.isArray(args)) throw bad(`a call of ${f instanceof Global ? f.name : typeName(f)}`);
        stack.push(call(args));
        break;
      }
      case 0x73:
        setItems(stack.splice(stack.length - 2));
        break; // SETITEM
      case 0x75:
        setItems(popMark());
        break; // SETITEMS
      case 0x62:
        pop();
        break; // BUILD: the state_dict's _metadata (module versions), not needed
      default:
        throw bad(`pickle opcode 0x${(op ?? 0).toString(16)} at byte ${p - 1}`);
    }
  }
}

/** The entries of a zip archive of stored (uncompressed) files, as torch.save writes it; CRC-32 checked. */
function unzip(path: string, b: Uint8Array): Map<string, Uint8Array> {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength), files = new Map<string, Uint8Array>();
  const u16 = (at: number) => dv.getUint16(at, true), u32 = (at: number) => dv.getUint32(at, true);
  const u64 = (at: number) => Number(dv.getBigUint64(at, true));
  const bad = (why: string) => new CheckpointError(`${path} is not a readable PyTorch file (${why})`);
  let end = b.length - 22;
  while (end >= 0 && u32(end) !== 0x06054b50) end--; // the end of central directory record
  if (end < 0) throw bad("no zip directory: truncated?");
  let [count, at] = [u16(end + 10), u32(end + 16)];
  if (at === 0xffffffff && end >= 20 && u32(end - 20) === 0x07064b50) { // zip64
    const z = u64(end - 12);
    if (z + 56 > b.length || u32(z) !== 0x06064b50) throw bad("bad zip64 directory");
    [count, at] = [u64(z + 32), u64(z + 48)];
  }
  for (let i = 0; i < count; i++) {
    if (at + 46 > b.length || u32(at) !== 0x02014b50) throw bad("bad zip directory: truncated?");
    const nameLen = u16(at + 28), extraLen = u16(at + 30), name = utf8.decode(b.subarray(at + 46, at + 46 + nameLen));
    let [size, offset] = [u32(at + 24), u32(at + 42)];
    for (let e = at + 46 + nameLen; e + 4 <= at + 46 + nameLen + extraLen; e += 4 + u16(e + 2)) {
      if (u16(e) !== 1) continue; // the zip64 sizes and offset, each where the 32-bit field is 0xffffffff
      let f = e + 4;
      if (size === 0xffffffff) size = u64(f), f += 8;
      if (u32(at + 20) === 0xffffffff) f += 8;
      if (offset === 0xffffffff) offset = u64(f);
    }
    if (u16(at + 10) !== 0) throw bad(`${name} is compressed`);
    if (offset + 30 > b.length || u32(offset) !== 0x04034b50) throw bad(`bad zip entry ${name}`);
    const start = offset + 30 + u16(offset + 26) + u16(offset + 28);
    if (start + size > b.length) throw bad(`${name} is truncated`);
    const data = b.subarray(start, start + size);
    if (crc32(data) !== u32(at + 16)) throw new CheckpointError(`${path}: ${name} is damaged (CRC-32 differs)`);
    files.set(name, data);
    at += 46 + nameLen + extraLen + u16(at + 32);
  }
  return files;
}

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  for (let k = 0; k < 8; k++) n = n & 1 ? 0xedb88320 ^ (n >>> 1) : n >>> 1;
  return n;
});
function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ------------------------------------------------------------------ writing

/** A torch.save file of a state_dict: archive/data.pkl (an OrderedDict of tensors), archive/data/<i>, version. */
export function writePt(tensors: Tensors): Uint8Array {
  const storages = [...tensors.values()].map(({ values }) =>
    new Uint8Array(values.buffer, values.byteOffset, 4 * values.length)
  );
  return zip([
    ["archive/data.pkl", pickleStateDict(tensors)],
    ["archive/byteorder", encode("little")],
    ...storages.map((s, i) => [`archive/data/${i}`, s] as [string, Uint8Array]),
    ["archive/version", encode("3\n")],
  ]);
}

/** Pickle (protocol 2) of OrderedDict{name: _rebuild_tensor_v2(storage i, 0, shape, stride, False, OrderedDict())}. */
function pickleStateDict(tensors: Tensors): Uint8Array {
  const out: number[] = [0x80, 2];
  const op = (...codes: number[]) => out.push(...codes);
  const text = (s: string) => {
    const e = encode(s);
    op(0x58, ...new Uint8Array(new Uint32Array([e.length]).buffer), ...e); // BINUNICODE
  };
  const int = (n: number) => op(0x4a, ...new Uint8Array(new Int32Array([n]).buffer)); // BININT
  const tuple = (ns: number[]) => (op(0x28), ns.forEach(int), op(0x74)); // MARK ... TUPLE
  const global = (module: string, name: string) => op(0x63, ...encode(`${module}\n${name}\n`));
  const orderedDict = () => (global("collections", "OrderedDict"), op(0x29, 0x52)); // EMPTY_TUPLE, REDUCE
  orderedDict();
  op(0x28); // MARK
  [...tensors].forEach(([name, { shape }], i) => {
    text(name);
    global("torch._utils", "_rebuild_tensor_v2");
    op(0x28, 0x28); // MARK (args), MARK (persistent id)
    text("storage"), global("torch", "FloatStorage"), text(String(i)), text("cpu"), int(numel(shape));
    op(0x74, 0x51); // TUPLE, BINPERSID
    int(0), tuple(shape), tuple(shape.map((_, d) => numel(shape.slice(d + 1))));
    op(0x89), orderedDict(); // requires_grad False, no backward hooks
    op(0x74, 0x52); // TUPLE, REDUCE
  });
  op(0x75, 0x2e); // SETITEMS, STOP
  return Uint8Array.from(out);
}

/** Little-endian fields, each [width in bytes, value]. */
function fields(...fs: [2 | 4, number][]): Uint8Array {
  const out = new Uint8Array(fs.reduce((n, [w]) => n + w, 0)), dv = new DataView(out.buffer);
  let at = 0;
  for (const [w, v] of fs) w === 2 ? dv.setUint16(at, v, true) : dv.setUint32(at, v, true), at += w;
  return out;
}

/** A zip of stored entries, each one's data 64-byte aligned by an "FB" extra field (as torch.save does). */
export function zip(entries: [string, Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [], central: Uint8Array[] = [];
  let at = 0;
  for (const [name, data] of entries) {
    const n = encode(name), pad = (64 - (at + 30 + n.length + 4) % 64) % 64, crc = crc32(data), len = data.length;
    const common: [2 | 4, number][] = [[2, 20], [2, 0], [2, 0], [2, 0], [2, 0], [4, crc], [4, len], [4, len]];
    const local = [fields([4, 0x04034b50], ...common, [2, n.length], [2, 4 + pad]), n, fields([2, 0x4246], [2, pad])];
    parts.push(...local, new Uint8Array(pad), data);
    central.push(
      fields([4, 0x02014b50], [2, 20], ...common, [2, n.length], [2, 0], [2, 0], [2, 0], [2, 0], [4, 0], [4, at]),
      n,
    );
    at += [...local, data].reduce((s, p) => s + p.length, pad);
  }
  const size = central.reduce((s, c) => s + c.length, 0), k = entries.length;
  const end = fields([4, 0x06054b50], [2, 0], [2, 0], [2, k], [2, k], [4, size], [4, at], [2, 0]);
  const out = new Uint8Array(at + size + end.length);
  let o = 0;
  for (const p of [...parts, ...central, end]) out.set(p, o), o += p.length;
  return out;
}
