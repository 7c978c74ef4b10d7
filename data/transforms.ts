// The tutorial's transforms on RGB arrays, as torchvision computes them: Resize(1.25 × size) (done once, for the cache)
// and RandomResizedCrop(size, scale=(0.8, 1)) at every epoch.
import type { Rand } from "../kernels/backend.ts";
import type { RGBImage } from "./datasets.ts";

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

/** The centred square of a W×H image: torchvision's CenterCrop(min(W, H)). */
export function centerBox(W: number, H: number): Box {
  const side = Math.min(W, H);
  return { x: (W - side) / 2, y: (H - side) / 2, w: side, h: side };
}

/**
 * The tutorial's transform: RandomResizedCrop(size, scale=(0.8, 1)) of the resized image; without `crop`, its centred
 * square resized whole (a folder's images as they are: config.ts cropRule).
 */
export function augment(c: Cached, size: number, rand: Rand, out: Float32Array, offset: number, crop = true) {
  const b = crop ? randomCropBox(c.W, c.H, rand) : centerBox(c.W, c.H), sx = c.img.w / c.W, sy = c.img.h / c.H;
  const pix = resample(c.img, { x: b.x * sx, y: b.y * sy, w: b.w * sx, h: b.h * sy }, size, size);
  for (let i = 0; i < pix.length; i++) out[offset + i] = pix[i] / 127.5 - 1;
}
