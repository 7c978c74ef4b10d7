// Where the images come from. The built-in procedural sets, drawn at the requested size as uint8 RGB (HWC) so that
// everything runs offline: landscapes (sky, sun or moon, layered mountain ridges, water or ground) and shapes (10
// classes); and the decoding of PNG/JPEG files. CIFAR-10's files: cifar.ts; image folders: image_folder.ts; the Dataset
// of batches: utils.ts.
import { decode, Image } from "imagescript";
import jpeg from "imagescript/wasm/node/jpeg.js"; // imagescript's decoders, without its RGBA copies
import png from "imagescript/wasm/node/png.js";

/** Bad input data; the message is one line naming the file or folder. */
export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}

/** An RGB image, uint8, row-major HWC. */
export interface RGBImage {
  w: number;
  h: number;
  pix: Uint8Array;
}

type RGB = [number, number, number];

const clamp01 = (v: number) => v < 0 ? 0 : v > 1 ? 1 : v;
const mix = (a: RGB, b: RGB, t: number): RGB => [
  a[0] + (b[0] - a[0]) * t,
  a[1] + (b[1] - a[1]) * t,
  a[2] + (b[2] - a[2]) * t,
];

/** Alpha-blends colour c into the float image at pixel p. */
function blend(img: Float32Array, p: number, c: RGB, a: number) {
  img[p * 3] += (c[0] - img[p * 3]) * a;
  img[p * 3 + 1] += (c[1] - img[p * 3 + 1]) * a;
  img[p * 3 + 2] += (c[2] - img[p * 3 + 2]) * a;
}

// ---------------------------------------------------------------- landscapes

/** Draws one landscape of size×size into out (uint8 RGB) at offset. */
export function drawLandscape(size: number, rand: () => number, out: Uint8Array, offset: number) {
  const u = (lo: number, hi: number) => lo + (hi - lo) * rand();
  const img = new Float32Array(size * size * 3);
  const time = rand() < 0.45 ? "day" : rand() < 0.65 ? "sunset" : "night";

  // Colours of the sky (top, horizon), the land, the rocks and the sun/moon.
  let top: RGB, hor: RGB, land: RGB, rock: RGB, light: RGB;
  if (time === "day") {
    top = [u(20, 60), u(70, 120), u(170, 225)];
    hor = [u(160, 205), u(200, 228), u(230, 250)];
    land = rand() < 0.6
      ? [u(50, 90), u(95, 140), u(40, 70)] // green
      : [u(120, 160), u(100, 130), u(60, 85)]; // dry brown
    rock = [u(40, 75), u(60, 95), u(60, 85)];
    light = [255, 250, 225];
  } else if (time === "sunset") {
    top = [u(40, 90), u(30, 60), u(90, 150)];
    hor = mix([255, 150, 60], [245, 115, 140], rand()); // orange to pink
    land = [u(60, 90), u(40, 60), u(50, 75)];
    rock = [u(45, 75), u(25, 45), u(55, 85)];
    light = [255, u(200, 235), u(120, 170)];
  } else {
    top = [u(2, 10), u(4, 14), u(18, 40)];
    hor = [u(25, 45), u(35, 55), u(70, 100)];
    land = [u(10, 20), u(14, 26), u(22, 38)];
    rock = [u(6, 14), u(8, 16), u(16, 30)];
    light = [235, 235, 215];
  }

  // Sky: a gradient down to the horizon, with a sun or moon and its glow
  // (a sunset sun sits low, partly behind the ridges).
  const horizon = size * u(0.58, 0.72), rows = Math.min(size, Math.ceil(horizon));
  const r = Math.max(1.2, size * (time === "sunset" ? u(0.07, 0.11) : u(0.045, 0.075)));
  const cx = size * u(0.15, 0.85);
  const cy = time === "sunset" ? horizon - size * u(0.1, 0.25) : size * u(0.1, 0.3);
  const glow = time === "sunset" ? 0.55 : time === "day" ? 0.3 : 0.15;
  for (let y = 0; y < rows; y++) {
    const sky = mix(top, hor, ((y + 0.5) / horizon) ** 0.8);
    for (let x = 0; x < size; x++) {
      const p = y * size + x, d = Math.hypot(x + 0.5 - cx, y + 0.5 - cy);
      img.set(sky, p * 3);
      if (d < 10 * r) blend(img, p, light, glow * Math.exp(-((d / (4 * r)) ** 2)));
      if (d < r + 1) blend(img, p, light, clamp01(r - d + 0.5));
    }
  }
  if (time === "night") { // a few stars
    for (let s = 0; s < size * size / 200; s++) {
      const p = Math.floor(u(0, size)) + size * Math.floor(u(0, rows * 0.7));
      blend(img, p, [255, 255, 240], u(0.2, 0.8));
    }
  }

  // Mountain ridges, far to near: smooth sums of sines. Farther ridges are
  // higher, smoother and hazier (aerial perspective); mist fills the valleys.
  const layers = rand() < 0.5 ? 2 : 3;
  for (let k = 0; k < layers; k++) {
    const near = k / (layers - 1); // 0 = farthest, 1 = nearest
    const height = size * (near ? u(0.05, 0.14) : u(0.2, 0.34)) * (1 - 0.3 * near);
    const amp = size * (0.12 - 0.06 * near) * u(0.6, 1.2);
    const waves = [1, 2, 4].map((f, j) => ({
      f: f * u(1, 1.8) * 2 * Math.PI / size,
      phase: u(0, 2 * Math.PI),
      a: amp / (1 + j) / 1.83,
    }));
    let face = mix(mix(rock, hor, 0.55 * (1 - near) ** 1.3), [0, 0, 0], 0.15 * near);
    if (near === 1 && time !== "night") face = mix(face, land, 0.6); // green hills
    for (let x = 0; x < size; x++) {
      let ridge = horizon - height;
      for (const w of waves) ridge -= w.a * Math.sin(w.f * (x + 0.5) + w.phase);
      for (let y = Math.max(0, Math.floor(ridge)); y < rows; y++) {
        const mist = 0.3 * (1 - near / 2) * clamp01((y + 0.5 - ridge) / (0.25 * size));
        blend(img, y * size + x, face, clamp01(y + 1 - ridge));
        blend(img, y * size + x, hor, mist);
      }
    }
  }

  // Below the horizon: a lake reflecting the scene above, or the ground.
  const water = rand() < 0.4;
  for (let y = rows; y < size; y++) {
    const depth = (y + 0.5 - horizon) / (size - horizon); // 0..1
    const mirror = Math.max(0, Math.min(rows - 1, Math.floor(2 * horizon - y - 0.5)));
    const ground = mix(mix(land, hor, 0.35 * (1 - depth) ** 2), [0, 0, 0], 0.35 * depth);
    for (let x = 0; x < size; x++) {
      const p = y * size + x;
      if (!water) img.set(ground, p * 3);
      else {
        img.copyWithin(p * 3, (mirror * size + x) * 3, (mirror * size + x) * 3 + 3);
        blend(img, p, [20, 45, 80], 0.25 + 0.2 * depth);
        blend(img, p, [0, 0, 0], 0.15);
      }
    }
  }
  new Uint8ClampedArray(out.buffer, out.byteOffset + offset, img.length).set(img); // clamps, rounds
}

// -------------------------------------------------------------------- shapes

export const SHAPE_CLASSES = [
  "circle",
  "square",
  "triangle",
  "diamond",
  "cross",
  "ring",
  "horizontal stripes",
  "vertical stripes",
  "diagonal stripes",
  "checkerboard",
];

function hsv(h: number, s: number, v: number): RGB {
  const f = (n: number) => {
    const k = (n + h * 6) % 6;
    return 255 * v * (1 - s * Math.max(0, Math.min(k, 4 - k, 1)));
  };
  return [f(5), f(3), f(1)];
}

const luma = (c: RGB) => 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];

/** Signed distance (pixels) to the edges of stripes of period P: < 0 inside. */
function stripe(v: number, P: number) {
  const t = ((v % P) + P) % P;
  return t < P / 2 ? -Math.min(t, P / 2 - t) : Math.min(t - P / 2, P - t);
}

/** Draws one image of shape class `label` into out (uint8 RGB) at offset. */
export function drawShape(label: number, size: number, rand: () => number, out: Uint8Array, offset: number) {
  const u = (lo: number, hi: number) => lo + (hi - lo) * rand();
  // Random foreground/background colours with a clear brightness contrast.
  let fg: RGB, bg: RGB;
  do {
    fg = hsv(rand(), u(0.3, 1), u(0.25, 1));
    bg = hsv(rand(), u(0.2, 1), u(0.2, 1));
  } while (Math.abs(luma(fg) - luma(bg)) < 70);

  const r = size * u(0.3, 0.42); // half-extent of an object, centred (±1 px): at 16 px the class is most of the pixels
  const cx = size / 2 + u(-1, 1), cy = size / 2 + u(-1, 1);
  const t = Math.max(1, 0.3 * r); // ring and cross thickness
  const P = Math.max(4, size * u(0.3, 0.45)), ph = u(0, P); // pattern period (≥ 4.8 px at 16 px), phase
  const dir = rand() < 0.5 ? 1 : -1;
  const box = (dx: number, dy: number, a: number, b: number) => Math.max(Math.abs(dx) - a, Math.abs(dy) - b);
  // Signed distance to the shape's edge in pixels (negative = inside).
  const sdf: ((dx: number, dy: number, x: number, y: number) => number)[] = [
    (dx, dy) => Math.hypot(dx, dy) - r,
    (dx, dy) => box(dx, dy, 0.85 * r, 0.85 * r),
    (dx, dy) => { // equilateral triangle pointing up (y grows downwards)
      const R = 1.15 * r, y = dy - 0.2 * R;
      return Math.max(y, 0.866 * dx - 0.5 * y, -0.866 * dx - 0.5 * y) - R / 2;
    },
    (dx, dy) => (Math.abs(dx) + Math.abs(dy) - 1.1 * r) / Math.SQRT2,
    (dx, dy) => Math.min(box(dx, dy, r, t / 1.5), box(dx, dy, t / 1.5, r)),
    (dx, dy) => Math.abs(Math.hypot(dx, dy) - r + t / 2) - t / 2,
    (_dx, _dy, _x, y) => stripe(y + ph, P),
    (_dx, _dy, x) => stripe(x + ph, P),
    (_dx, _dy, x, y) => stripe((x + dir * y) / Math.SQRT2 + ph, P),
  ];
  const dst = new Uint8ClampedArray(out.buffer, out.byteOffset + offset, size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const px = x + 0.5, py = y + 0.5;
      let a: number; // anti-aliased coverage of the pixel by the shape
      if (label === 9) { // checkerboard: XOR of two stripe patterns
        const ax = clamp01(0.5 - stripe(px + ph, P)), ay = clamp01(0.5 - stripe(py + ph, P));
        a = ax * (1 - ay) + ay * (1 - ax);
      } else a = clamp01(0.5 - sdf[label](px - cx, py - cy, px, py));
      const o = (y * size + x) * 3;
      for (let k = 0; k < 3; k++) dst[o + k] = bg[k] + (fg[k] - bg[k]) * a;
    }
  }
}

// ------------------------------------------------------------- image files

type JpegFrame = { width: number; height: number; format: number; buffer: Uint8Array };
type Decoders = {
  png: { decode(bytes: Uint8Array): { width: number; height: number; framebuffer: Uint8Array } };
  jpeg: { decode(bytes: Uint8Array, width?: number, height?: number): JpegFrame };
};
let decoders: Promise<Decoders> | undefined;

/** imagescript's PNG and JPEG decoders, one instance each: a new one per image would hold its memory until a GC. */
const codecs = () => decoders ??= Promise.all([png.init(), jpeg.init()]).then(([png, jpeg]) => ({ png, jpeg }));

/** A decoded JPEG (imagescript's decoder: 0 = gray, 1 = RGB, 2 = CMYK, as imagescript converts it) as RGB. */
function jpegRGB({ width: w, height: h, format, buffer: b }: JpegFrame): RGBImage {
  if (format === 1) return { w, h, pix: b };
  const pix = new Uint8Array(w * h * 3);
  for (let p = 0; p < w * h; p++) {
    for (let k = 0; k < 3; k++) {
      pix[p * 3 + k] = format === 0 ? b[p] : 255 * (1 - b[p * 4 + k] / 255) * (1 - b[p * 4 + 3] / 255);
    }
  }
  return { w, h, pix };
}

/** [width, height] from a JPEG's frame header (SOF marker), or null. */
function jpegSize(b: Uint8Array): [number, number] | null {
  for (let i = 2; i + 8 < b.length; i += 2 + ((b[i + 2] << 8) | b[i + 3])) {
    if (b[i] !== 0xff) return null;
    const m = b[i + 1];
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      return [(b[i + 7] << 8) | b[i + 8], (b[i + 5] << 8) | b[i + 6]];
    }
  }
  return null;
}

/**
 * Decodes a PNG/JPEG to RGB; alpha is dropped (like PIL's convert("RGB")). A JPEG is decoded at 1/8, 1/4 or 1/2
 * scale (DCT scaling, like PIL's draft mode: up to 8× faster) where its short side stays ≥ `short`.
 */
export async function decodeRGB(bytes: Uint8Array, short = 0): Promise<RGBImage> {
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
    const { jpeg } = await codecs(), size = short ? jpegSize(bytes) : null;
    const s = size && [8, 4, 2].find((s) => Math.ceil(Math.min(...size) / s) >= short);
    return jpegRGB(s ? jpeg.decode(bytes, Math.ceil(size[0] / s), Math.ceil(size[1] / s)) : jpeg.decode(bytes));
  }
  let w: number, h: number, rgba: ArrayLike<number>;
  if (bytes.length > 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) {
    ({ width: w, height: h, framebuffer: rgba } = (await codecs()).png.decode(bytes));
  } else { // other formats imagescript reads (GIF: the first frame), or its error
    const decoded = await decode(bytes, true), im = decoded instanceof Image ? decoded : decoded[0];
    [w, h, rgba] = [im.width, im.height, im.bitmap];
  }
  const pix = new Uint8Array(w * h * 3);
  for (let p = 0; p < w * h; p++) for (let k = 0; k < 3; k++) pix[p * 3 + k] = rgba[p * 4 + k];
  return { w, h, pix };
}
