// CIFAR-10's binary files, downloaded (with a progress line), checked (MD5), extracted from their tar.gz and parsed
// into 32×32 HWC images; utils.ts makes them a Dataset.
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { gunzipSync } from "node:zlib";
import { DataError } from "./datasets.ts";

const CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
const CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530";
const CIFAR_FILES = [1, 2, 3, 4, 5].map((k) => `data_batch_${k}.bin`);
export const CIFAR_CLASSES = [
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
];

/** Parses CIFAR-10 binary records (1 label byte + 1024 R + 1024 G + 1024 B) to HWC images. */
export function parseCifarBatch(bytes: Uint8Array): { images: Uint8Array[]; labels: number[] } {
  if (bytes.length % 3073) throw new DataError(`CIFAR-10 batch size ${bytes.length} is not a multiple of 3073 bytes`);
  const images: Uint8Array[] = [], labels: number[] = [];
  for (let r = 0; r < bytes.length; r += 3073) {
    const img = new Uint8Array(3072);
    for (let p = 0; p < 1024; p++) {
      for (let c = 0; c < 3; c++) img[p * 3 + c] = bytes[r + 1 + c * 1024 + p];
    }
    images.push(img);
    labels.push(bytes[r]);
  }
  return { images, labels };
}

/** The files of a tar archive (512-byte headers; regular files only). */
export function readTar(tar: Uint8Array): { name: string; data: Uint8Array }[] {
  const text = (a: number, n: number) => new TextDecoder().decode(tar.subarray(a, a + n)).replace(/\0[^]*$/, "");
  const files = [];
  for (let off = 0; off + 512 <= tar.length;) {
    const name = text(off, 100), size = parseInt(text(off + 124, 12).trim() || "0", 8);
    if (!name) break; // end-of-archive zero block
    const prefix = text(off + 257, 6) === "ustar" ? text(off + 345, 155) : "";
    const type = text(off + 156, 1);
    if (type === "0" || type === "") {
      files.push({
        name: prefix ? `${prefix}/${name}` : name,
        data: new Uint8Array(tar.subarray(off + 512, off + 512 + size)),
      });
    }
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

async function exists(path: string) {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Downloads url into memory, logging a progress bar about once a second. */
async function download(url: string, log: (s: string) => void): Promise<Uint8Array> {
  const res = await fetch(url);
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
  const total = Number(res.headers.get("content-length") ?? 0), chunks: Uint8Array[] = [];
  const mb = (n: number) => (n / 1e6).toFixed(1);
  let got = 0, last = 0;
  for await (const chunk of res.body) {
    chunks.push(chunk);
    got += chunk.length;
    if (Date.now() - last > 1000 || got === total) {
      const bar = total ? "#".repeat(Math.round(20 * got / total)).padEnd(20, ".") : "";
      log(`downloading [${bar}] ${mb(got)}/${total ? mb(total) : "?"} MB`);
      last = Date.now();
    }
  }
  const bytes = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}

/** Paths of data_batch_1..5.bin, downloading and extracting them if needed. */
async function cifarFiles(dir: string, url = CIFAR_URL, log: (s: string) => void) {
  for (const d of [dir, join(dir, "cifar-10-batches-bin")]) {
    const paths = CIFAR_FILES.map((f) => join(d, f));
    if ((await Promise.all(paths.map(exists))).every(Boolean)) return paths;
  }
  const help = `put cifar-10-binary.tar.gz or data_batch_1..5.bin into ${dir} by hand, or use --data DIR`;
  const tgz = join(dir, "cifar-10-binary.tar.gz");
  let bytes: Uint8Array, source = tgz;
  if (await exists(tgz)) bytes = await Deno.readFile(tgz);
  else {
    log(`downloading CIFAR-10 (163 MB) from ${url} to ${dir}`);
    source = url;
    bytes = await download(url, log).catch((e) => {
      const why = String(e.message).replace(/\s+/g, " ");
      throw new DataError(`could not download CIFAR-10 from ${url} (${why}); ${help}`);
    });
  }
  const md5 = createHash("md5").update(bytes).digest("hex");
  if (md5 !== CIFAR_MD5) throw new DataError(`bad MD5 checksum of ${source} (${md5}, not ${CIFAR_MD5}); ${help}`);
  log(`extracting CIFAR-10 to ${dir}`);
  await extractCifar(bytes, dir);
  return CIFAR_FILES.map((f) => join(dir, f));
}

/** Writes the .bin files of cifar-10-binary.tar.gz into dir. */
export async function extractCifar(tgz: Uint8Array, dir: string) {
  await Deno.mkdir(dir, { recursive: true });
  for (const { name, data } of readTar(gunzipSync(tgz))) {
    if (!name.endsWith(".bin")) continue;
    const path = join(dir, basename(name)); // write, then rename: no half files
    await Deno.writeFile(path + ".tmp", data);
    await Deno.rename(path + ".tmp", path);
  }
}

/** Reads up to `count` CIFAR-10 training images (32×32 HWC) and labels. */
export async function readCifar(dir: string, count: number, url: string | undefined, log: (s: string) => void) {
  const images: Uint8Array[] = [], labels: number[] = [];
  for (const file of await cifarFiles(dir, url, log)) {
    if (images.length >= count) break;
    const bytes = await Deno.readFile(file);
    if (bytes.length % 3073) throw new DataError(`${file} is not a CIFAR-10 batch (size not a multiple of 3073)`);
    const batch = parseCifarBatch(bytes);
    for (let i = 0; i < batch.images.length && images.length < count; i++) {
      if (batch.labels[i] > 9) throw new DataError(`${file}: bad CIFAR-10 label ${batch.labels[i]}`);
      images.push(batch.images[i]);
      labels.push(batch.labels[i]);
    }
  }
  return { images, labels };
}
