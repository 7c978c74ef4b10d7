// `deno task bench:decode`, the image folder bench: a generated folder of large JPEGs and PNGs, decoded with 1 worker
// and with one per core (first start, no cache), then a start that writes the cache and one that reads it.
import { Image } from "imagescript";
import { join } from "node:path";
import process from "node:process";
import { defaultNotes, helpText, readFlags, runCli } from "../run/cli.ts";
import { mulberry32 } from "../kernels/backend.ts";
import { loadDataset } from "../utils.ts";

/** A photo-like test image: smooth colour gradients, waves and a little noise (so PNGs do not compress to nothing). */
function photo(w: number, h: number, seed: number) {
  const img = new Image(w, h), rand = mulberry32(seed), [a, b, c] = [rand(), rand(), rand()];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const wave = 40 * Math.sin((x * (1 + 3 * a) + y * (2 * b)) / 60) * Math.cos(y / (40 + 80 * c));
      const n = (rand() - 0.5) * 24, o = (y * w + x) * 4;
      img.bitmap[o] = 255 * x / w * (0.5 + a / 2) + wave + n;
      img.bitmap[o + 1] = 255 * y / h * (0.5 + b / 2) - wave + n;
      img.bitmap[o + 2] = 128 + 100 * c * Math.sin((x + y) / 150) + n;
      img.bitmap[o + 3] = 255;
    }
  }
  return img;
}

/**
 * n files, half JPEG (quality 90) and half PNG, written from 16 distinct images; each copy ends in its number after
 * the image's end, a file of its own (a folder's images are deduplicated by content).
 */
async function writeFolder(dir: string, n: number, w: number, h: number) {
  await Deno.mkdir(dir, { recursive: true });
  const kinds = Math.min(16, n), names: string[] = [];
  for (let k = 0; k < kinds; k++) {
    const img = photo(w, h, k), jpeg = k % 2 === 0;
    names.push(join(dir, `img_${String(k).padStart(4, "0")}.${jpeg ? "jpg" : "png"}`));
    await Deno.writeFile(names[k], jpeg ? await img.encodeJPEG(90) : await img.encode());
  }
  for (let i = kinds; i < n; i++) {
    const from = names[i % kinds];
    const bytes = await Deno.readFile(from), copy = new Uint8Array(bytes.length + 4);
    copy.set(bytes);
    new DataView(copy.buffer).setUint32(bytes.length, i);
    await Deno.writeFile(join(dir, `img_${String(i).padStart(4, "0")}${from.slice(-4)}`), copy);
  }
}

/** Wall seconds of a load, and the cores it kept busy (process CPU time / wall time: < workers on a busy machine). */
async function timeLoad(dir: string, size: number, workers: number, cacheDir: string | null) {
  const t0 = performance.now(), cpu0 = process.cpuUsage();
  await loadDataset(dir, size, { workers, noCache: cacheDir === null, cacheDir: cacheDir ?? undefined });
  const seconds = (performance.now() - t0) / 1000, cpu = process.cpuUsage(cpu0);
  return { seconds, cores: (cpu.user + cpu.system) / 1e6 / seconds };
}

const SIZES = { files: 500, "photo-width": 2000, "photo-height": 1500, "image-size": 64 }; // the defaults

const HELP = helpText(
  "bench:decode",
  `Time the decoding of an image folder: a generated folder of large JPEGs and PNGs, decoded with 1 worker and with
one per core (no cache), then a start that writes the cache and one that reads it.

  deno task bench:decode [--files 500] [--photo-width 2000] [--photo-height 1500] [--image-size 64] [--dir DIR]`,
  defaultNotes(SIZES),
);

async function main() {
  const v = readFlags("bench:decode", Deno.args, SIZES);
  if (v.help) return console.log(HELP);
  const { files: n, "image-size": size, "photo-width": w, "photo-height": h } = v as typeof SIZES;
  const root = (v.dir as string | undefined) ?? await Deno.makeTempDir({ prefix: "ddpm_bench_decode_" });
  const dir = join(root, "images"), cache = join(root, "cache"), all = navigator.hardwareConcurrency;
  try {
    const t0 = performance.now();
    await writeFolder(dir, n, w, h);
    console.log(`wrote ${n} ${w}×${h} images to ${dir} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    const one = await timeLoad(dir, size, 1, null);
    const many = await timeLoad(dir, size, all, null);
    const first = await timeLoad(dir, size, all, cache);
    const cached = await timeLoad(dir, size, all, cache);
    const rate = (r: { seconds: number; cores: number }) =>
      `${r.seconds.toFixed(1)} s (${(n / r.seconds).toFixed(1)} images/s, ${r.cores.toFixed(2)} cores busy)`;
    console.log(
      `\n${n} images ${w}×${h} (JPEG + PNG) to ${size} px: 1 worker ${rate(one)}, ${all} workers ${rate(many)}: ` +
        `${(one.seconds / many.seconds).toFixed(2)}× | first start with the cache ${first.seconds.toFixed(1)} s, ` +
        `cached start ${cached.seconds.toFixed(2)} s`,
    );
  } finally {
    if (!v.dir) await Deno.remove(root, { recursive: true });
  }
}

if (import.meta.main) await runCli(main);
