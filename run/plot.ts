// The loss curve, drawn twice: loss.png (a canvas and a 3×5 bitmap font, no other library) and the SVG of the run's
// page (report.ts). Every step faint, a moving average bold, and a log axis past two decades.
import { Image } from "imagescript";
import { dirname } from "node:path";

/** A centred moving average, about 2 % of the values each side (a narrower window at the ends). */
function movingAverage(ys: number[]): number[] {
  const k = Math.max(1, Math.floor(ys.length / 50)), sum = [0];
  for (const v of ys) sum.push(sum[sum.length - 1] + v);
  return ys.map((_, i) => {
    const h = Math.min(k, i, ys.length - 1 - i);
    return (sum[i + h + 1] - sum[i - h]) / (2 * h + 1);
  });
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
  const smooth = movingAverage(vals);
  if (pts.length === 1) cv.dot(px(xvals[0]) - 1, py(vals[0]) - 1, [25, 75, 190], 3);
  for (const [series, color, s] of [[vals, [170, 195, 235], 1], [smooth, [25, 75, 190], 2]] as const) {
    for (let i = 1; i < series.length; i++) {
      cv.line(px(xvals[i - 1]), py(series[i - 1]), px(xvals[i]), py(series[i]), [...color], s);
    }
  }
  await Deno.mkdir(dirname(path), { recursive: true });
  await Deno.writeFile(path, await cv.img.encode());
}

/** The loss curve as SVG: every step faint, a centred moving average bold; a log axis past two decades. */
export function lossSvg(rows: { step: number; loss: number }[], W = 640, H = 280): string {
  const pts = rows.filter((r) => Number.isFinite(r.loss) && Number.isFinite(r.step)), ys = pts.map((r) => r.loss);
  if (!pts.length) return "<p>no steps yet</p>";
  const [L, R, T, B] = [64, 16, 10, 40], lo = Math.min(...ys), hi = Math.max(...ys);
  const logY = lo > 0 && hi / lo > 100, f = (v: number) => logY ? Math.log10(v) : v;
  const [y0, y1] = lo === hi ? [f(lo) - 0.5, f(hi) + 0.5] : [f(lo), f(hi)];
  const [x0, x1] = [pts[0].step, Math.max(pts.at(-1)!.step, pts[0].step + 1)];
  const px = (x: number) => (L + (x - x0) / (x1 - x0) * (W - L - R)).toFixed(1);
  const py = (v: number) => (H - B - (v - y0) / (y1 - y0) * (H - T - B)).toFixed(1);
  const smooth = movingAverage(ys);
  const every = Math.ceil(pts.length / 1500); // at most ~1500 points a line
  const line = (vs: number[], cls: string) =>
    `<polyline class="${cls}" points="${
      pts.flatMap((p, i) => i % every && i < pts.length - 1 ? [] : [`${px(p.step)},${py(f(vs[i]))}`]).join(" ")
    }"/>`;
  const label = (v: number) => logY ? `${+(10 ** v).toPrecision(3)}` : `${+v.toPrecision(6)}`;
  const yTicks = ticks(y0, y1).filter((v) => !logY || Number.isInteger(v));
  return `<svg class="plot" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img">
${
    yTicks.map((v) =>
      `<line class="grid" x1="${L}" x2="${W - R}" y1="${py(v)}" y2="${py(v)}"/>
<text x="${L - 6}" y="${py(v)}" dy="4" text-anchor="end">${label(v)}</text>`
    ).join("\n")
  }
${
    ticks(x0, x1).filter(Number.isInteger).map((x) =>
      `<line class="grid" y1="${T}" y2="${H - B}" x1="${px(x)}" x2="${px(x)}"/>
<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle">${x}</text>`
    ).join("\n")
  }
<path class="axis" d="M${L},${T}V${H - B}H${W - R}"/>${line(ys, "raw")}${line(smooth, "smooth")}
<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">step</text>
<text transform="translate(14 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">MSE${
    logY ? " (log)" : ""
  }</text></svg>`;
}
