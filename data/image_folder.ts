// An image folder like torchvision's ImageFolder: its listing (with a warning for every file left out), decoding in
// parallel workers (decode_worker.ts, one per core), and a disk cache of the decoded, resized images: one file per
// folder and image size, so that a second start reads that file instead of decoding every photo again.
import { createHash } from "node:crypto";
import { basename, dirname, extname, join, relative, resolve } from "node:path";
import { DataError } from "./datasets.ts";
import type { Decoded } from "./decode_worker.ts";
import type { Cached } from "./transforms.ts";

type Log = (line: string) => void;

/** An image file: its class, and the size and mtime that tell whether it changed since it was cached. */
export interface ImageFile {
  file: string;
  label: number;
  bytes: number;
  mtime: number; // ms since 1970
}

/** A file left out, and why ("dangling symbolic link", "unreadable", "not a valid PNG/JPEG", ...). */
export interface Skip {
  file: string;
  why: string;
  detail?: string;
}

const IMAGE_EXTS = [".png", ".jpg", ".jpeg"];
const OTHER_IMAGE_EXTS = [".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".avif"];
const message = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0];

function skip(skips: Skip[], log: Log, s: Skip) {
  log(`warning: skipping ${s.file}: ${s.why}${s.detail ? ` (${s.detail})` : ""}`);
  skips.push(s);
}

type Entries = { name: string; isFile: boolean; isDirectory: boolean; bytes: number; mtime: number }[];

/** The entries of dir, sorted, without hidden ones; symbolic links are followed, dangling ones reported. */
async function listDir(dir: string, skips: Skip[], log: Log) {
  const entries: Entries = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".")) continue;
    const path = join(dir, e.name);
    if (!e.isSymlink && !(e.isFile && IMAGE_EXTS.includes(extname(e.name).toLowerCase()))) {
      entries.push({ name: e.name, isFile: e.isFile, isDirectory: e.isDirectory, bytes: 0, mtime: 0 });
      continue;
    }
    try { // images and links: their size and mtime (of the target)
      const s = await Deno.stat(path);
      entries.push({ ...s, name: e.name, bytes: s.size, mtime: s.mtime?.getTime() ?? 0 });
    } catch (err) {
      const target = e.isSymlink ? await Deno.readLink(path).catch(() => "?") : "";
      const dangling = e.isSymlink && err instanceof Deno.errors.NotFound;
      skip(
        skips,
        log,
        dangling ? { file: path, why: "dangling symbolic link", detail: `to ${target}` } : {
          file: path,
          why: "unreadable",
          detail: message(err),
        },
      );
    }
  }
  return entries.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

/** Image files in dir (recursively, sorted). */
async function listImages(dir: string, label: number, recursive: boolean, skips: Skip[], log: Log, listed?: Entries) {
  const files: ImageFile[] = [];
  const entries = listed ?? await listDir(dir, skips, log).catch((err) => {
    skip(skips, log, { file: dir, why: "unreadable folder", detail: message(err) });
    return [];
  });
  for (const e of entries) {
    const file = join(dir, e.name), ext = extname(e.name).toLowerCase();
    if (e.isDirectory && recursive) files.push(...await listImages(file, label, true, skips, log));
    else if (e.isFile && IMAGE_EXTS.includes(ext)) files.push({ file, label, bytes: e.bytes, mtime: e.mtime });
    else if (e.isFile && OTHER_IMAGE_EXTS.includes(ext)) skip(skips, log, { file, why: "unsupported format" });
  }
  return files;
}

/** The image files of a folder: class sub-folders (labels = sorted names, searched recursively), or a flat folder
 * of images (one class named after the folder). Other files are ignored; files left out are named in `log`. */
export async function listImageFolder(path: string, log: Log) {
  const stat = await Deno.stat(path).catch(() => null);
  if (!stat) throw new DataError(`data folder not found: ${path}`);
  if (!stat.isDirectory) throw new DataError(`not a folder: ${path}`);
  const skips: Skip[] = [];
  const top = await listDir(path, skips, log), subdirs = top.filter((e) => e.isDirectory).map((e) => e.name);
  const classes = subdirs.length ? subdirs : [basename(resolve(path))];
  const files: ImageFile[] = [];
  for (const [label, c] of classes.entries()) {
    const dir = subdirs.length ? join(path, c) : path;
    const found = await listImages(dir, label, subdirs.length > 0, skips, log, subdirs.length ? undefined : top);
    if (!found.length && subdirs.length) log(`warning: no .png/.jpg images in ${dir}`);
    files.push(...found);
  }
  if (!files.length) throw new DataError(`no .png/.jpg/.jpeg images found in ${path}`);
  return { classes, files: await once(files, log), skips };
}

/**
 * Each image once: a file reached by several paths (symbolic links) by its first, and files of the same bytes (by
 * their SHA-256, among those of one size) by the first; the duplicates left out are counted in `log`.
 */
async function once(files: ImageFile[], log: Log) {
  const paths = new Set<string>(), hashes = new Set<string>(), kept: ImageFile[] = [];
  const sizes = new Map<number, number>();
  for (const f of files) sizes.set(f.bytes, (sizes.get(f.bytes) ?? 0) + 1);
  let links = 0, copies = 0;
  for (const f of files) {
    const real = await Deno.realPath(f.file);
    if (paths.has(real)) {
      links++;
      continue;
    }
    paths.add(real);
    if (sizes.get(f.bytes)! > 1) { // the same bytes can only be in a file of the same size
      const hash = createHash("sha256").update(await Deno.readFile(f.file)).digest("hex");
      if (hashes.has(hash)) {
        copies++;
        continue;
      }
      hashes.add(hash);
    }
    kept.push(f);
  }
  if (links + copies) {
    log(
      `left out ${links + copies} duplicate(s): ${links} path(s) to a file listed already, ${copies} copie(s) of one`,
    );
  }
  return kept;
}

/** Which half of a folder a run sees with --holdout: the half it trains on, or the half held out for the judge. */
export type Part = "train" | "held-out";

/**
 * --holdout's split: in each class, the files in the order of sha256(`seed:path`) (path relative to the folder), the
 * first ⌊n/2⌋ held out. Adding or removing a file moves no other file between the halves' orders.
 */
export function holdoutSplit(folder: string, files: ImageFile[], seed: number) {
  const rank = (f: ImageFile) => createHash("sha256").update(`${seed}:${relative(folder, f.file)}`).digest("hex");
  const heldOut = new Set<ImageFile>();
  for (const label of new Set(files.map((f) => f.label))) {
    const ranked = files.filter((f) => f.label === label).map((f) => ({ f, r: rank(f) }));
    ranked.sort((a, b) => a.r < b.r ? -1 : 1);
    for (const { f } of ranked.slice(0, ranked.length >> 1)) heldOut.add(f);
  }
  return { train: files.filter((f) => !heldOut.has(f)), "held-out": files.filter((f) => heldOut.has(f)) };
}

// ---------------------------------------------------------------- the cache file

const VERSION = 1; // of the cache format and of the resize (transforms.ts fit)
const MAGIC = new TextEncoder().encode("DDPM-IMAGE-CACHE\n");

/** A file of the cache: its size and mtime when it was decoded, then its resized image or why it was skipped. */
interface Entry {
  file: string; // relative to the folder
  bytes: number;
  mtime: number;
  w?: number; // the cached pixels: w×h RGB
  h?: number;
  W?: number; // the virtual Resize size the random crop is drawn in (transforms.ts fit)
  H?: number;
  pix?: Uint8Array;
  why?: string;
  detail?: string;
}

/** The cache key: the files (relative paths, sizes, mtimes, in order) and the image size. */
export function cacheKey(folder: string, files: ImageFile[], size: number): string {
  const list = files.map((f) => [relative(folder, f.file), f.bytes, f.mtime]);
  return createHash("sha256").update(JSON.stringify([VERSION, size, list])).digest("hex");
}

/** The cache file of a folder at an image size: one per folder and size, under dir. */
export function cacheFile(dir: string, folder: string, size: number) {
  const abs = resolve(folder), id = createHash("sha256").update(abs).digest("hex").slice(0, 12);
  return join(dir, `${basename(abs).replace(/[^\w.-]/g, "_")}-${size}px-${id}.bin`);
}

/** The entries of a cache file by relative path (pixels are views into the one buffer read), or null. */
async function readCache(path: string, log: Log) {
  const buf = await Deno.readFile(path).catch(() => null);
  if (!buf) return null;
  try {
    if (!MAGIC.every((b, i) => buf[i] === b)) throw new Error("not a cache file");
    const n = new DataView(buf.buffer, buf.byteOffset).getUint32(MAGIC.length, true);
    let at = MAGIC.length + 4 + n;
    const { key, entries } = JSON.parse(new TextDecoder().decode(buf.subarray(MAGIC.length + 4, at)));
    for (const e of entries as Entry[]) if (e.w) e.pix = buf.subarray(at, at += e.w * e.h! * 3);
    if (at !== buf.length) throw new Error(`${buf.length} bytes, expected ${at}`);
    return { key: key as string, entries: new Map((entries as Entry[]).map((e) => [e.file, e])) };
  } catch (e) {
    log(`warning: ignoring the damaged cache ${path} (${message(e)})`);
    return null;
  }
}

/** Writes the cache: a header (JSON) and the pixels one after the other; to a temporary file, then renamed. */
async function writeCache(path: string, key: string, entries: Entry[]) {
  const header = new TextEncoder().encode(JSON.stringify({ key, entries: entries.map(({ pix: _, ...e }) => e) }));
  const head = new Uint8Array(MAGIC.length + 4 + header.length);
  head.set(MAGIC);
  new DataView(head.buffer).setUint32(MAGIC.length, header.length, true);
  head.set(header, MAGIC.length + 4);
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${Deno.pid}.tmp`, pixels = entries.flatMap((e) => e.pix ? [e.pix] : []);
  try {
    await Deno.writeFile(tmp, ReadableStream.from([head, ...pixels]));
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

// ---------------------------------------------------------------- decoding

/** Decodes `files` in `workers` workers, two files in flight per worker; the answers in file order. */
async function decodeInWorkers(files: string[], size: number, workers: number, onEach: () => void) {
  const out: Decoded[] = new Array(files.length);
  let next = 0;
  const pool = Array.from(
    { length: Math.min(workers, files.length) },
    () => new Worker(new URL("./decode_worker.ts", import.meta.url).href, { type: "module" }),
  );
  try {
    await Promise.all(pool.map((w) =>
      new Promise<void>((done, fail) => {
        const inFlight = new Set<number>();
        const send = () => {
          for (; inFlight.size < 2 && next < files.length; next++) {
            inFlight.add(next);
            w.postMessage({ i: next, file: files[next], size });
          }
          if (!inFlight.size) done();
        };
        w.onmessage = (e: MessageEvent<Decoded>) => {
          out[e.data.i] = e.data;
          inFlight.delete(e.data.i);
          onEach();
          send();
        };
        w.onerror = (e) => { // not a decoding error (those are answers): the worker itself stopped
          e.preventDefault();
          fail(new DataError(`decoding ${[...inFlight].map((i) => files[i]).join(" or ")} failed: ${e.message}`));
        };
        send();
      })
    ));
  } finally {
    for (const w of pool) w.terminate();
  }
  return out;
}

export interface DecodeOptions {
  cacheDir: string | null; // null: no cache
  workers?: number; // default: one per core
  log: Log;
  onDecoded?: (done: number, total: number) => void; // progress: called with 0 before the first image
}

/**
 * The images of `files` resized for crops of `size`: from the folder's cache file where a file is unchanged (same
 * size and mtime), the others decoded in workers; then the cache is rewritten if anything changed.
 */
export async function decodeFolder(folder: string, files: ImageFile[], size: number, opts: DecodeOptions) {
  const { log } = opts, t0 = performance.now();
  const path = opts.cacheDir === null ? null : cacheFile(opts.cacheDir, folder, size);
  const key = cacheKey(folder, files, size), old = path ? await readCache(path, log) : null;
  const entries: Entry[] = files.map((f) => {
    const file = relative(folder, f.file), e = old?.entries.get(file);
    return e && e.bytes === f.bytes && e.mtime === f.mtime ? e : { file, bytes: f.bytes, mtime: f.mtime };
  });
  const todo = entries.flatMap((e, i) => e.pix || e.why ? [] : [i]);
  const workers = Math.max(1, Math.min(opts.workers ?? navigator.hardwareConcurrency ?? 1, todo.length));
  if (todo.length) {
    const from = old ? `, ${files.length - todo.length} from the cache` : "";
    log(`decoding ${todo.length} images in ${workers} worker(s)${from}`);
    let done = 0;
    opts.onDecoded?.(done, todo.length);
    const decoded = await decodeInWorkers(todo.map((i) => files[i].file), size, workers, () => {
      opts.onDecoded?.(++done, todo.length);
    });
    decoded.forEach(({ i: _, ...d }, k) => Object.assign(entries[todo[k]], d));
  }
  const images: Cached[] = [], labels: number[] = [], skips: Skip[] = [];
  entries.forEach((e, i) => {
    if (e.pix) {
      images.push({ img: { w: e.w!, h: e.h!, pix: e.pix }, W: e.W!, H: e.H! });
      labels.push(files[i].label);
    } else skip(skips, log, { file: files[i].file, why: e.why!, detail: e.detail });
  });
  if (path && images.length && (todo.length || old?.key !== key)) {
    // An unreadable file may become readable without a new mtime (chmod): it is left out of the cache.
    await writeCache(path, key, entries.filter((e) => e.why !== "unreadable"))
      .catch((e) => log(`warning: could not write the cache ${path} (${message(e)})`));
  }
  const seconds = (performance.now() - t0) / 1000;
  log(
    `${files.length} images of ${folder} in ${seconds.toFixed(1)} s: ${files.length - todo.length} from the cache` +
      `${path ? ` ${path}` : " (--no-cache)"}, ${todo.length} decoded` +
      (todo.length ? ` by ${workers} worker(s), ${(todo.length / seconds).toFixed(1)} images/s` : ""),
  );
  return { images, labels, skips, fromCache: files.length - todo.length, decoded: todo.length, seconds };
}
