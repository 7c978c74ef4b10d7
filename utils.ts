/**
 * Data utilities for the DDPM tutorial: datasets (image folders, CIFAR-10,
 * built-in procedural sets), the tutorial's augmentation, and PNG output
 * (image grids and loss plots). Pure TypeScript + imagescript, no tfjs.
 */
import { Image } from "imagescript";
import { dirname, join } from "node:path";
import { CIFAR_CLASSES, DataError, drawLandscape, drawShape, readCifar, SHAPE_CLASSES } from "./datasets.ts";
import { decodeFolder, listImageFolder } from "./image_folder.ts";

export { DataError };
export { CIFAR_CLASSES, decodeRGB, parseCifarBatch, readTar, SHAPE_CLASSES } from "./datasets.ts";

export type Rand = () => number;

/** Small seeded PRNG (mulberry32): deterministic uniform numbers in [0, 1). */
export function mulberry32(seed: number): Rand {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A batch of images: x is n*size*size*3 (NHWC) with values in [-1, 1]. */
export interface Batch {
  x: Float32Array;
  labels: Int32Array;
  n: number;
}

export interface Dataset {
  name: string; // e.g. "builtin:landscapes", "cifar10", or the folder path
  size: number; // output image size (square)
  classes: string[]; // class names; a single class = unconditional data
  length: number; // number of images
  skipped: number; // files left out (named in a warning each): undecodable, unreadable, dangling links, other formats
  /** One epoch: shuffled batches (the last may be smaller), freshly augmented. */
  batches(batchSize: number, rand: Rand): Generator<Batch>;
}

export interface LoadOptions {
  seed?: number; // seed of the built-in generators and of `count` subsets
  count?: number; // load at most this many images
  cacheDir?: string; // where the CIFAR-10 .bin files and the decoded image folders are kept
  noCache?: boolean; // decode an image folder without its disk cache
  workers?: number; // decoding workers (default: one per core)
  log?: (line: string) => void; // progress and warnings (default console.log)
  url?: string; // CIFAR-10 download URL (for mirrors and tests)
}

// -------------------------------------------------- resizing and cropping

/** An RGB image, uint8, row-major HWC. */
export interface RGBImage {
  w: number;
  h: number;
  pix: Uint8Array;
}

/** A rectangle in pixel coordinates. */
export interface Box {
  x: number;
  y: number;
  w: number;
  h: number;
}

/** torchvision Resize(short): the new [w, h] with the short side = short. */
export function resizeShortSide(w: number, h: number, short: number): [number, number] {
  return w <= h ? [short, Math.floor(short * h / w)] : [Math.floor(short * w / h), short];
}

/** torchvision RandomResizedCrop.get_params: a random box of a W×H image. */
export function randomCropBox(W: number, H: number, rand: Rand, scale = [0.8, 1], ratio = [3 / 4, 4 / 3]): Box {
  const [r0, r1] = [Math.log(ratio[0]), Math.log(ratio[1])];
  for (let attempt = 0; attempt < 10; attempt++) {
    const area = W * H * (scale[0] + (scale[1] - scale[0]) * rand());
    const aspect = Math.exp(r0 + (r1 - r0) * rand());
    const w = Math.round(Math.sqrt(area * aspect));
    const h = Math.round(Math.sqrt(area / aspect));
    if (w > 0 && w <= W && h > 0 && h <= H) {
      return { x: Math.floor(rand() * (W - w + 1)), y: Math.floor(rand() * (H - h + 1)), w, h };
    }
  }
  // Fallback: a central crop with the aspect ratio clamped into `ratio`.
  let w = W, h = H;
  if (W / H < ratio[0]) h = Math.round(W / ratio[0]);
  else if (W / H > ratio[1]) w = Math.round(H * ratio[1]);
  return { x: Math.floor((W - w) / 2), y: Math.floor((H - h) / 2), w, h };
}

/** 1-D resampling weights: bilinear when enlarging, area average when shrinking. */
function taps(start: number, len: number, inLen: number, n: number) {
  const s = len / n, out: { i: number[]; w: number[] }[] = [];
  const clampI = (k: number) => Math.min(Math.max(k, 0), inLen - 1);
  for (let j = 0; j < n; j++) {
    if (s <= 1) {
      const f = clampI(start + (j + 0.5) * s - 0.5), i0 = Math.floor(f);
      out.push({ i: [i0, clampI(i0 + 1)], w: [1 - (f - i0), f - i0] });
    } else {
      const a = start + j * s, b = a + s, i: number[] = [], w: number[] = [];
      for (let k = Math.floor(a); k < Math.ceil(b); k++) {
        i.push(clampI(k));
        w.push((Math.min(b, k + 1) - Math.max(a, k)) / s);
      }
      out.push({ i, w });
    }
  }
  return out;
}

/** Resamples the `box` of img to outW×outH (separable); float RGB 0..255. */
export function resample(img: RGBImage, box: Box, outW: number, outH: number): Float32Array {
  const tx = taps(box.x, box.w, img.w, outW), ty = taps(box.y, box.h, img.h, outH);
  const tmp = new Float32Array(img.h * outW * 3); // rows of img, resampled in x
  for (let y = 0; y < img.h; y++) {
    for (let x = 0; x < outW; x++) {
      const { i, w } = tx[x], o = (y * outW + x) * 3;
      for (let k = 0; k < i.length; k++) {
        const p = (y * img.w + i[k]) * 3;
        tmp[o] += w[k] * img.pix[p];
        tmp[o + 1] += w[k] * img.pix[p + 1];
        tmp[o + 2] += w[k] * img.pix[p + 2];
      }
    }
  }
  const out = new Float32Array(outH * outW * 3), row = outW * 3;
  for (let y = 0; y < outH; y++) {
    const { i, w } = ty[y];
    for (let k = 0; k < i.length; k++) {
      for (let x = 0; x < row; x++) out[y * row + x] += w[k] * tmp[i[k] * row + x];
    }
  }
  return out;
}

/** A cached image: pixels (at most at resized size) and its virtual Resize size. */
export interface Cached {
  img: RGBImage;
  W: number;
  H: number;
}

/** The short side of the cached images: the tutorial's Resize(80) before RandomResizedCrop(64). */
export const cachedShortSide = (size: number) => Math.round(1.25 * size);

/** Resize(1.25 × size) for the cache; small images are kept as they are. */
export function fit(img: RGBImage, size: number): Cached {
  const [W, H] = resizeShortSide(img.w, img.h, cachedShortSide(size));
  if (img.w <= W && img.h <= H) return { img, W, H }; // enlarged in the crop
  const pix = Uint8Array.from(resample(img, { x: 0, y: 0, w: img.w, h: img.h }, W, H), Math.round);
  return { img: { w: W, h: H, pix }, W, H };
}

/** The tutorial's transform: RandomResizedCrop(size, scale=(0.8, 1)) of the resized image. */
function augment(c: Cached, size: number, rand: Rand, out: Float32Array, offset: number) {
  const b = randomCropBox(c.W, c.H, rand), sx = c.img.w / c.W, sy = c.img.h / c.H;
  const crop = resample(c.img, { x: b.x * sx, y: b.y * sy, w: b.w * sx, h: b.h * sy }, size, size);
  for (let i = 0; i < crop.length; i++) out[offset + i] = crop[i] / 127.5 - 1;
}

// ------------------------------------------------------------------ datasets

type Draw = (i: number, out: Float32Array, offset: number, rand: Rand) => void;

function makeDataset(info: Omit<Dataset, "batches" | "length">, labels: ArrayLike<number>, draw: Draw): Dataset {
  const length = labels.length, px = info.size * info.size * 3;
  return {
    ...info,
    length,
    *batches(batchSize: number, rand: Rand) {
      if (!(batchSize >= 1)) throw new RangeError(`bad batch size ${batchSize}`);
      const order = shuffle(Array.from({ length }, (_, i) => i), rand);
      for (let s = 0; s < length; s += batchSize) {
        const idx = order.slice(s, s + batchSize), n = idx.length;
        const x = new Float32Array(n * px), batchLabels = new Int32Array(n);
        idx.forEach((k, b) => {
          draw(k, x, b * px, rand);
          batchLabels[b] = labels[k];
        });
        yield { x, labels: batchLabels, n };
      }
    },
  };
}

function shuffle<T>(a: T[], rand: Rand): T[] {
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
  return makeDataset({ name: spec, size, classes, skipped: 0 }, labels, (i, out, o, r) => {
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
  const { classes, files: all, skips: listed } = await listImageFolder(path, log);
  const count = opts.count ?? Infinity; // if fewer: a seeded random subset
  const files = count < all.length ? shuffle(all, mulberry32(opts.seed ?? 0)).slice(0, count) : all;
  const cacheDir = opts.noCache ? null : opts.cacheDir ?? join(cacheRoot(), "images");
  const { images, labels, skips } = await decodeFolder(path, files, size, { cacheDir, workers: opts.workers, log });
  const skipped = [...listed, ...skips], why = new Map<string, number>();
  for (const s of skipped) why.set(s.why, (why.get(s.why) ?? 0) + 1);
  if (skipped.length) log(`skipped ${skipped.length} file(s): ${[...why].map(([w, n]) => `${n} ${w}`).join(", ")}`);
  if (!images.length) throw new DataError(`none of the ${files.length} images in ${path} could be decoded`);
  const info = { name: path, size, classes, skipped: skipped.length };
  return makeDataset(info, labels, (i, out, o, r) => augment(images[i], size, r, out, o));
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
  const info = { name: "cifar10", size, classes: [...CIFAR_CLASSES], skipped: 0 };
  return makeDataset(info, labels, (i, out, o, r) => augment(items[i], size, r, out, o));
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

// A tiny 3×5 bitmap font: one octal digit (3 pixels) per row, top to bottom.
const FONT = new Map(
  ("0:75557 1:26227 2:71747 3:71317 4:55711 5:74717 6:74757 7:71122 8:75757 " +
    "9:75717 A:25755 B:65656 C:34443 D:65556 E:74647 F:74644 G:34553 H:55755 " +
    "I:72227 J:11152 K:55655 L:44447 M:57755 N:65555 O:25552 P:65644 Q:25563 " +
    "R:65655 S:34216 T:72222 U:55557 V:55552 W:55775 X:55255 Y:55222 Z:71247 " +
    ".:00002 -:00700 +:02720 (:12221 ):42224 :::02020 /:11244 _:00007 " +
    ",:00024 =:07070 %:51245 ?:71302").split(" ").map((g) => [g[0], g.slice(2)]),
);
FONT.set(" ", "00000");

type Color = [number, number, number];

/** A white RGBA canvas with pixel, line and text drawing. */
class Canvas {
  img: Image;
  constructor(readonly w: number, readonly h: number) {
    this.img = new Image(w, h).fill(0xffffffff);
  }
  dot(x: number, y: number, c: Color, s = 1) {
    for (let dy = 0; dy < s; dy++) {
      for (let dx = 0; dx < s; dx++) {
        const px = Math.round(x) + dx, py = Math.round(y) + dy;
        if (px >= 0 && py >= 0 && px < this.w && py < this.h) this.img.bitmap.set(c, (py * this.w + px) * 4);
      }
    }
  }
  line(x0: number, y0: number, x1: number, y1: number, c: Color, s = 1) {
    const n = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    for (let i = 0; i <= n; i++) this.dot(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, c, s);
  }
  /** Text at 2× scale (8 px per character), anchored left / centre / right. */
  text(str: string, x: number, y: number, align = 0, c: Color = [0, 0, 0]) {
    x -= (str.length * 8 - 2) * (align + 1) / 2;
    for (const [k, ch] of [...str.toUpperCase()].entries()) {
      const g = FONT.get(ch) ?? FONT.get("?")!;
      for (let r = 0; r < 5; r++) {
        for (let b = 0; b < 3; b++) if ((Number(g[r]) >> (2 - b)) & 1) this.dot(x + k * 8 + b * 2, y + r * 2, c, 2);
      }
    }
  }
}

/** About 5 round tick values covering [lo, hi]. */
export function ticks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 5, mag = 10 ** Math.floor(Math.log10(raw));
  const step = mag * (raw / mag >= 5 ? 5 : raw / mag >= 2 ? 2 : 1), out = [];
  for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) out.push(+(i * step).toPrecision(12));
  return out;
}

const fmt = (v: number) => Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(0) : String(v);

/** Saves a line plot (e.g. the loss curve): raw values faint, a moving average bold. */
export async function savePlot(
  path: string,
  ys: number[],
  opts: { title?: string; xs?: number[]; xlabel?: string } = {},
) {
  const W = 640, H = 400, L = 76, R = 20, T = 34, B = 52, cv = new Canvas(W, H);
  const pts = ys.map((y, i) => [opts.xs?.[i] ?? i, y]).filter(([x, y]) => isFinite(x) && isFinite(y));
  const vals = pts.map((p) => p[1]), xvals = pts.map((p) => p[0]);
  const lo = Math.min(...vals, Infinity), hi = Math.max(...vals, -Infinity);
  const logY = lo > 0 && hi / lo > 100; // more than 2 decades: log scale
  const fy = (v: number) => logY ? Math.log10(v) : v;
  const pad = (a: number, b: number): [number, number] =>
    !pts.length ? [0, 1] : a === b ? [a - (Math.abs(a) || 1) * 0.1, b + (Math.abs(b) || 1) * 0.1] : [a, b];
  const [y0, y1] = pad(fy(lo), fy(hi)), [x0, x1] = pad(Math.min(...xvals), Math.max(...xvals));
  const px = (x: number) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (v: number) => H - B - (fy(v) - y0) / (y1 - y0) * (H - T - B);

  // Grid and tick labels.
  const yt = logY ? [] : ticks(y0, y1);
  for (let e = Math.floor(y0); logY && e <= y1; e++) { // decades, with minor lines
    for (let m = 2; m < 10; m++) {
      const v = m * 10 ** e, y = py(v);
      if (Math.log10(v) > y0 && Math.log10(v) < y1) cv.line(L, y, W - R, y, [240, 240, 240]);
    }
    if (e >= y0) yt.push(10 ** e);
  }
  for (const t of yt) {
    cv.line(L, py(t), W - R, py(t), [225, 225, 225]);
    cv.text(fmt(+t.toPrecision(6)), L - 8, py(t) - 5, 1);
  }
  for (const t of ticks(x0, x1)) {
    cv.line(px(t), T, px(t), H - B, [225, 225, 225]);
    cv.text(fmt(t), px(t), H - B + 8, 0);
  }
  cv.line(L, T, L, H - B, [0, 0, 0]);
  cv.line(L, H - B, W - R, H - B, [0, 0, 0]);
  if (opts.title) cv.text(opts.title, W / 2, 10, 0);
  if (opts.xlabel) cv.text(opts.xlabel, (L + W - R) / 2, H - 20, 0);
  if (logY) cv.text("LOG", 6, 10, -1, [120, 120, 120]);

  // Raw values (faint), then a centred moving average (bold).
  const k = Math.max(1, Math.floor(pts.length / 50)), sum = [0];
  for (const v of vals) sum.push(sum[sum.length - 1] + v);
  const smooth = vals.map((_, i) => { // symmetric window, narrower at the ends
    const h = Math.min(k, i, vals.length - 1 - i);
    return (sum[i + h + 1] - sum[i - h]) / (2 * h + 1);
  });
  if (pts.length === 1) cv.dot(px(xvals[0]) - 1, py(vals[0]) - 1, [25, 75, 190], 3);
  for (const [series, color, s] of [[vals, [170, 195, 235], 1], [smooth, [25, 75, 190], 2]] as const) {
    for (let i = 1; i < series.length; i++) {
      cv.line(px(xvals[i - 1]), py(series[i - 1]), px(xvals[i]), py(series[i]), [...color], s);
    }
  }
  await writePNG(path, cv.img);
}
