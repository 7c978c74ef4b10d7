// The tutorial's utils.py, get_data and save_images: a Dataset of shuffled, augmented batches from the built-in sets,
// an image folder or CIFAR-10, and PNG grids of images.
import { Image } from "imagescript";
import { dirname, join, relative } from "node:path";
import { mulberry32, type Rand } from "./kernels/backend.ts";
import { CIFAR_CLASSES, readCifar } from "./data/cifar.ts";
import { DataError, drawLandscape, drawShape, SHAPE_CLASSES } from "./data/datasets.ts";
import { decodeFolder, holdoutSplit, listImageFolder } from "./data/image_folder.ts";
import { augment, fit } from "./data/transforms.ts";
import { Progress } from "./run/progress.ts";

/** A batch of images: x is n*size*size*3 (NHWC) with values in [-1, 1]. */
export interface Batch {
  /** The pixels, n·size·size·3 floats (NHWC) in [-1, 1]. */
  x: Float32Array;
  /** One class index per image. */
  labels: Int32Array;
  /** The number of images. */
  n: number;
}

/** Training images in memory: their size, classes, and shuffled augmented batches. */
export interface Dataset {
  /** e.g. "builtin:landscapes", "cifar10", or the folder path */
  name: string;
  /** output image size (square) */
  size: number;
  /** class names; a single class = unconditional data */
  classes: string[];
  /** number of images */
  length: number;
  /** files left out (named in a warning each): undecodable, unreadable, dangling links, other formats */
  skipped: number;
  /** a folder's or CIFAR-10's images: random crops at each epoch (the tutorial's); false: each resized whole */
  crop: boolean;
  /** --holdout: the files of the half held out (relative to the folder), which this set never holds */
  heldOut?: string[];
  /** One epoch: shuffled batches (the last may be smaller), freshly augmented. */
  batches(batchSize: number, rand: Rand): Generator<Batch>;
}

/** How loadDataset loads: subsets, the cache, workers, the log. */
export interface LoadOptions {
  /** seed of the built-in generators and of `count` subsets */
  seed?: number;
  /** load at most this many images */
  count?: number;
  /** where the CIFAR-10 .bin files and the decoded image folders are kept */
  cacheDir?: string;
  /** decode an image folder without its disk cache */
  noCache?: boolean;
  /** decoding workers (default: one per core) */
  workers?: number;
  /** progress and warnings (default console.log) */
  log?: (line: string) => void;
  /** CIFAR-10 download URL (for mirrors and tests) */
  url?: string;
  /** --holdout: load only this half of an image folder (holdoutSplit) */
  holdout?: "train" | "held-out";
  /** random crops of a folder's or CIFAR-10's images (default; Dataset.crop, which can be set after loading) */
  crop?: boolean;
}

// ------------------------------------------------------------------ datasets

type Draw = (i: number, out: Float32Array, offset: number, rand: Rand, crop: boolean) => void;

function makeDataset(info: Omit<Dataset, "batches" | "length">, labels: ArrayLike<number>, draw: Draw): Dataset {
  const length = labels.length, px = info.size * info.size * 3;
  return {
    ...info,
    length,
    *batches(this: Dataset, batchSize: number, rand: Rand) {
      if (!(batchSize >= 1)) throw new RangeError(`bad batch size ${batchSize}`);
      const order = shuffle(Array.from({ length }, (_, i) => i), rand);
      for (let s = 0; s < length; s += batchSize) {
        const idx = order.slice(s, s + batchSize), n = idx.length;
        const x = new Float32Array(n * px), batchLabels = new Int32Array(n);
        idx.forEach((k, b) => {
          draw(k, x, b * px, rand, this.crop);
          batchLabels[b] = labels[k];
        });
        yield { x, labels: batchLabels, n };
      }
    },
  };
}

/** Fisher–Yates: a uniformly random order, in place. */
export function shuffle<T>(a: T[], rand: Rand): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** Loads "builtin:landscapes", "builtin:shapes", "cifar10" or an image folder. */
export async function loadDataset(spec: string, size: number, opts: LoadOptions = {}): Promise<Dataset> {
  const log = opts.log ?? console.log;
  if (!(Number.isInteger(size) && size > 0)) throw new RangeError(`bad image size ${size}`);
  if (opts.holdout && (spec.startsWith("builtin:") || spec === "cifar10")) {
    throw new DataError(`--holdout needs an image folder (class sub-folders or a flat folder), not ${spec}`);
  }
  if (spec.startsWith("builtin:")) return builtin(spec, size, opts);
  if (spec === "cifar10") return await loadCifar(size, opts, log);
  return await loadFolder(spec, size, opts, log);
}

/** Procedural images, drawn once at `size`; augmented by random horizontal flips. */
function builtin(spec: string, size: number, opts: LoadOptions): Dataset {
  const shapes = spec === "builtin:shapes";
  if (!shapes && spec !== "builtin:landscapes") {
    throw new DataError(`unknown dataset ${spec} (try builtin:landscapes or builtin:shapes)`);
  }
  const n = opts.count ?? 2000, px = size * size * 3, rand = mulberry32(opts.seed ?? 0);
  const pix = new Uint8Array(n * px), labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = shapes ? i % SHAPE_CLASSES.length : 0;
    if (shapes) drawShape(labels[i], size, rand, pix, i * px);
    else drawLandscape(size, rand, pix, i * px);
  }
  const classes = shapes ? [...SHAPE_CLASSES] : ["landscape"];
  return makeDataset({ name: spec, size, classes, skipped: 0, crop: false }, labels, (i, out, o, r) => {
    const flip = r() < 0.5;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const s = i * px + (y * size + (flip ? size - 1 - x : x)) * 3, d = o + (y * size + x) * 3;
        for (let k = 0; k < 3; k++) out[d + k] = pix[s + k] / 127.5 - 1;
      }
    }
  });
}

/** An image folder like torchvision's ImageFolder (image_folder.ts): class sub-folders, or flat. */
async function loadFolder(path: string, size: number, opts: LoadOptions, log: (s: string) => void) {
  const { classes, files: listedFiles, skips: listed } = await listImageFolder(path, log);
  const split = opts.holdout ? holdoutSplit(path, listedFiles, opts.seed ?? 0) : null;
  const all = split?.[opts.holdout!] ?? listedFiles;
  const count = opts.count ?? Infinity; // if fewer: a seeded random subset
  const files = count < all.length ? shuffle(all, mulberry32(opts.seed ?? 0)).slice(0, count) : all;
  const imageCache = opts.cacheDir ?? join(cacheRoot(), "images");
  // (the held-out half has a cache file of its own: one file for both halves would be rewritten at each switch)
  const cacheDir = opts.noCache ? null : opts.holdout === "held-out" ? join(imageCache, "held-out") : imageCache;
  let progress: Progress;
  const onDecoded = (done: number, total: number) => {
    if (done === 0) progress = new Progress(total, 1, log, "images/s");
    else progress.show(done, `decoding ${done}/${total} images`);
    if (done === total) progress.done();
  };
  const { images, labels, skips } = await decodeFolder(path, files, size, {
    cacheDir,
    workers: opts.workers,
    log,
    onDecoded,
  });
  const skipped = [...listed, ...skips], why = new Map<string, number>();
  for (const s of skipped) why.set(s.why, (why.get(s.why) ?? 0) + 1);
  if (skipped.length) log(`skipped ${skipped.length} file(s): ${[...why].map(([w, n]) => `${n} ${w}`).join(", ")}`);
  if (!images.length) throw new DataError(`none of the ${files.length} images in ${path} could be decoded`);
  const heldOut = split?.["held-out"].map((f) => relative(path, f.file));
  const info = {
    name: path,
    size,
    classes,
    skipped: skipped.length,
    crop: opts.crop ?? true,
    ...(split ? { heldOut } : {}),
  };
  return makeDataset(info, labels, (i, out, o, r, crop) => augment(images[i], size, r, out, o, crop));
}

/** $DDPM_CACHE, else ~/.cache/ddpm-deno. */
const cacheRoot = () => Deno.env.get("DDPM_CACHE") ?? join(Deno.env.get("HOME") ?? ".", ".cache", "ddpm-deno");

// ------------------------------------------------------------------ CIFAR-10

/** CIFAR-10 training set (50000 images of 32×32), with the tutorial's transform. */
async function loadCifar(size: number, opts: LoadOptions, log: (s: string) => void) {
  const dir = opts.cacheDir ?? join(cacheRoot(), "cifar10");
  const { images, labels } = await readCifar(dir, opts.count ?? Infinity, opts.url, log);
  const items = images.map((pix) => fit({ w: 32, h: 32, pix }, size));
  log(`loaded ${items.length} CIFAR-10 images from ${dir}`);
  const info = { name: "cifar10", size, classes: [...CIFAR_CLASSES], skipped: 0, crop: opts.crop ?? true };
  return makeDataset(info, labels, (i, out, o, r, crop) => augment(items[i], size, r, out, o, crop));
}

// ---------------------------------------------------------------- PNG output

async function writePNG(path: string, img: Image) {
  await Deno.mkdir(dirname(path), { recursive: true });
  await Deno.writeFile(path, await img.encode());
}

/** Saves n RGB uint8 images (NHWC) as a PNG grid with `cols` columns. */
export async function saveGrid(path: string, pixels: Uint8Array, n: number, size: number, cols?: number) {
  if (pixels.length !== n * size * size * 3) throw new RangeError(`expected ${n}×${size}×${size}×3 pixels`);
  const c = Math.max(1, Math.min(n, cols ?? Math.ceil(Math.sqrt(n)))), rows = Math.ceil(n / c), gap = 2;
  const img = new Image(c * (size + gap) + gap, rows * (size + gap) + gap).fill(0xffffffff);
  for (let i = 0; i < n; i++) {
    const x0 = gap + (i % c) * (size + gap), y0 = gap + Math.floor(i / c) * (size + gap);
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const s = ((i * size + y) * size + x) * 3, d = ((y0 + y) * img.width + x0 + x) * 4;
        img.bitmap.set(pixels.subarray(s, s + 3), d);
      }
    }
  }
  await writePNG(path, img);
}
