/**
 * Built-in procedural datasets, so that everything runs offline:
 * - landscapes: sky, sun or moon, layered mountain ridges, water or ground;
 * - shapes: 10 classes of simple shapes and patterns in random colours.
 * Images are drawn directly at the requested size as uint8 RGB (HWC).
 */
import type { Rand } from "./utils.ts";

type RGB = [number, number, number];

const clamp01 = (v: number) => v < 0 ? 0 : v > 1 ? 1 : v;
const mix = (a: RGB, b: RGB, t: number): RGB => [
  a[0] + (b[0] - a[0]) * t,
  a[1] + (b[1] - a[1]) * t,
  a[2] + (b[2] - a[2]) * t,
];
const scale = (a: RGB, s: number): RGB => [a[0] * s, a[1] * s, a[2] * s];

/** Alpha-blends colour c into the float image at pixel p. */
function blend(img: Float32Array, p: number, c: RGB, a: number) {
  for (let k = 0; k < 3; k++) img[p * 3 + k] += (c[k] - img[p * 3 + k]) * a;
}

function toUint8(img: Float32Array, out: Uint8Array, offset: number) {
  for (let i = 0; i < img.length; i++) {
    out[offset + i] = Math.max(0, Math.min(255, Math.round(img[i])));
  }
}

// ---------------------------------------------------------------- landscapes

/** Draws one landscape of size×size into out (uint8 RGB) at offset. */
export function drawLandscape(
  size: number,
  rand: Rand,
  out: Uint8Array,
  offset: number,
) {
  const u = (lo: number, hi: number) => lo + (hi - lo) * rand();
  const img = new Float32Array(size * size * 3);
  const time = rand() < 0.45 ? "day" : rand() < 0.65 ? "sunset" : "night";

  // Sky: gradient from the top colour to a hazy horizon colour.
  let top: RGB, hor: RGB, land: RGB, light: RGB;
  if (time === "day") {
    top = [u(20, 60), u(70, 120), u(170, 225)];
    hor = [u(160, 205), u(200, 228), u(230, 250)];
    land = rand() < 0.6
      ? [u(50, 90), u(95, 140), u(40, 70)] // green
      : [u(120, 160), u(100, 130), u(60, 85)]; // dry brown
    light = [255, 250, 225];
  } else if (time === "sunset") {
    top = [u(40, 90), u(30, 60), u(90, 150)];
    hor = mix([255, 150, 60], [245, 115, 140], rand());
    land = [u(60, 90), u(40, 60), u(50, 75)];
    light = [255, u(200, 235), u(120, 170)];
  } else {
    top = [u(2, 10), u(4, 14), u(18, 40)];
    hor = [u(25, 45), u(35, 55), u(70, 100)];
    land = [u(10, 20), u(14, 26), u(22, 38)];
    light = [235, 235, 215];
  }
  const horizon = size * u(0.58, 0.72);
  const rows = Math.min(size, Math.ceil(horizon));
  for (let y = 0; y < rows; y++) {
    const c = mix(top, hor, Math.pow(clamp01((y + 0.5) / horizon), 0.8));
    for (let x = 0; x < size; x++) img.set(c, (y * size + x) * 3);
  }

  // Sun or moon with a soft glow; a sunset sun sits low, behind the ridges.
  const r = Math.max(1.2, size * (time === "sunset" ? u(0.07, 0.11) : u(0.045, 0.075)));
  const cx = size * u(0.15, 0.85);
  const cy = time === "sunset" ? horizon - size * u(0.08, 0.25) : size * u(0.1, 0.32);
  const glow = time === "sunset" ? 0.55 : time === "day" ? 0.3 : 0.15;
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < size; x++) {
      const d = Math.hypot(x + 0.5 - cx, y + 0.5 - cy);
      const p = y * size + x;
      blend(img, p, light, glow * Math.exp(-((d / (4 * r)) ** 2)));
      blend(img, p, light, clamp01(r - d + 0.5));
    }
  }
  if (time === "night") { // a few stars
    for (let s = 0; s < size * size / 120; s++) {
      const p = Math.floor(u(0, size)) + size * Math.floor(u(0, rows * 0.8));
      blend(img, p, [255, 255, 240], u(0.3, 0.9));
    }
  }

  // Mountain ridges, far to near: smooth sums of sines; farther ridges are
  // higher, smoother and hazier (aerial perspective), with mist in valleys.
  const layers = rand() < 0.5 ? 2 : 3;
  const rock: RGB = time === "day"
    ? [u(40, 75), u(60, 95), u(60, 85)]
    : time === "sunset"
    ? [u(45, 75), u(25, 45), u(55, 85)]
    : [u(6, 14), u(8, 16), u(16, 30)];
  for (let k = 0; k < layers; k++) {
    const near = k / (layers - 1); // 0 = farthest, 1 = nearest
    const height = size * (near ? u(0.04, 0.13) : u(0.18, 0.3)) * (1 - 0.3 * near);
    const amp = size * (0.1 - 0.05 * near) * u(0.6, 1.2);
    const waves = [1, 2, 4].map((f, j) => ({
      f: (f + rand() * f * (1 + near)) * 2 * Math.PI / size,
      ph: u(0, 2 * Math.PI),
      a: 1 / (1 + j) / 1.83,
    }));
    const col = scale(mix(rock, hor, 0.6 * (1 - near) ** 1.3), 1 - 0.15 * near);
    const face = near === 1 && time !== "night" ? mix(col, land, 0.6) : col;
    for (let x = 0; x < size; x++) {
      let ridge = horizon - height;
      for (const w of waves) ridge -= amp * w.a * Math.sin(w.f * (x + 0.5) + w.ph);
      for (let y = Math.max(0, Math.floor(ridge)); y < rows; y++) {
        const mist = clamp01((y + 0.5 - ridge) / (0.25 * size));
        const c = mix(face, hor, 0.3 * mist * (1 - near * 0.5));
        blend(img, y * size + x, c, clamp01(y + 1 - ridge));
      }
    }
  }

  // Below the horizon: a lake reflecting the scene, or ground.
  const water = rand() < 0.4;
  for (let y = rows; y < size; y++) {
    const depth = (y + 0.5 - horizon) / (size - horizon); // 0..1
    const mirror = Math.max(0, Math.min(rows - 1, Math.floor(2 * horizon - y - 0.5)));
    for (let x = 0; x < size; x++) {
      const p = (y * size + x) * 3;
      if (water) {
        const q = (mirror * size + x) * 3;
        const c: RGB = [img[q], img[q + 1], img[q + 2]];
        img.set(scale(mix(c, [20, 45, 80], 0.25 + 0.2 * depth), 0.85), p);
      } else {
        img.set(scale(mix(land, hor, 0.35 * (1 - depth) ** 2), 1 - 0.35 * depth), p);
      }
    }
  }
  toUint8(img, out, offset);
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

/** Signed distance (pixels) to the edge of stripes of period P: < 0 inside. */
function stripe(v: number, P: number) {
  const t = ((v % P) + P) % P;
  return t < P / 2 ? -Math.min(t, P / 2 - t) : Math.min(t - P / 2, P - t);
}

/** Draws one image of shape class `label` into out (uint8 RGB) at offset. */
export function drawShape(
  label: number,
  size: number,
  rand: Rand,
  out: Uint8Array,
  offset: number,
) {
  const u = (lo: number, hi: number) => lo + (hi - lo) * rand();
  // Random foreground/background colours with a clear brightness contrast.
  let fg: RGB, bg: RGB;
  do {
    fg = hsv(rand(), u(0.3, 1), u(0.25, 1));
    bg = hsv(rand(), u(0.2, 1), u(0.2, 1));
  } while (Math.abs(luma(fg) - luma(bg)) < 70);

  const r = size * u(0.22, 0.38); // half-extent of an object
  const cx = u(r + 1, size - r - 1), cy = u(r + 1, size - r - 1);
  const t = Math.max(1, 0.3 * r); // ring/cross thickness
  const P = Math.max(4, size * u(0.22, 0.34)); // pattern period
  const ph = u(0, P), dir = rand() < 0.5 ? 1 : -1;
  const box = (dx: number, dy: number, a: number, b: number) => Math.max(Math.abs(dx) - a, Math.abs(dy) - b);

  // Signed distance to the shape's edge in pixels (negative = inside).
  const sdf = (x: number, y: number): number => {
    const dx = x - cx, dy = y - cy;
    switch (label) {
      case 0:
        return Math.hypot(dx, dy) - r;
      case 1:
        return box(dx, dy, 0.85 * r, 0.85 * r);
      case 2: { // equilateral triangle pointing up (y grows downwards)
        const R = 1.15 * r, yy = dy - 0.2 * R;
        return Math.max(yy, 0.866 * dx - 0.5 * yy, -0.866 * dx - 0.5 * yy) - R / 2;
      }
      case 3:
        return (Math.abs(dx) + Math.abs(dy) - 1.1 * r) / Math.SQRT2;
      case 4:
        return Math.min(box(dx, dy, r, t / 1.5), box(dx, dy, t / 1.5, r));
      case 5:
        return Math.abs(Math.hypot(dx, dy) - r + t / 2) - t / 2;
      case 6:
        return stripe(y + ph, P);
      case 7:
        return stripe(x + ph, P);
      case 8:
        return stripe((x + dir * y) / Math.SQRT2 + ph, P / Math.SQRT2);
      default:
        return NaN; // checkerboard: handled below
    }
  };
  const img = new Float32Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const px = x + 0.5, py = y + 0.5;
      let a: number;
      if (label === 9) { // XOR of two anti-aliased stripe patterns
        const ax = clamp01(0.5 - stripe(px + ph, P)), ay = clamp01(0.5 - stripe(py + ph, P));
        a = ax * (1 - ay) + ay * (1 - ax);
      } else a = clamp01(0.5 - sdf(px, py));
      img.set(mix(bg, fg, a), (y * size + x) * 3);
    }
  }
  toUint8(img, out, offset);
}
