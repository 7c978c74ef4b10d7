// Tests of the loss curve's PNG.
import assert from "node:assert/strict";
import { join } from "node:path";
import { decode, Image } from "imagescript";
import { savePlot } from "../run/plot.ts";
import { withTempDir } from "./helpers.ts";

/** The plot's PNG, and the top row of the curve's blue at column x (-1: none). */
async function readPlot(path: string) {
  const img = (await decode(await Deno.readFile(path))) as Image;
  const curveAt = (x: number) => {
    for (let y = 0; y < img.height; y++) {
      const [r, g, b] = img.bitmap.subarray((y * img.width + x) * 4);
      if (b > 150 && r < 60 && g < 110) return y;
    }
    return -1;
  };
  return { img, curveAt };
}

const plotMid = (34 + 400 - 52) / 2; // the middle of the plot area, between its top and bottom margins

Deno.test("savePlot writes a PNG; log scale for values over > 2 decades", async () => {
  await withTempDir(async (dir) => {
    // Exponential decay over 4 decades: a straight line on a log axis, so at
    // mid-x the curve is near mid-height (on a linear axis it would hug the bottom).
    const ys = Array.from({ length: 401 }, (_, i) => 10 ** (-i / 100));
    await savePlot(join(dir, "loss.png"), ys, { title: "loss", xlabel: "step" });
    const { img, curveAt } = await readPlot(join(dir, "loss.png"));
    assert.equal(img.width, 640);
    assert.equal(img.height, 400);
    const mid = curveAt(Math.round(img.width / 2 + 28));
    assert.ok(Math.abs(mid - plotMid) < 30, `curve at y=${mid}, plot middle ${plotMid}`);
  });
});

Deno.test("savePlot on degenerate data: a constant curve (with a NaN) is one flat line mid-plot; no data, a PNG", async () => {
  await withTempDir(async (dir) => {
    await savePlot(join(dir, "flat.png"), [1, NaN, 1], { xs: [0, 1, 2] });
    const { img, curveAt } = await readPlot(join(dir, "flat.png"));
    const rows = [0.15, 0.5, 0.95].map((f) => curveAt(Math.round(img.width * f)));
    assert.deepEqual(new Set(rows).size, 1, `curve rows ${rows}`); // flat from left to right
    assert.ok(Math.abs(rows[0] - plotMid) < 15, `flat curve at y=${rows[0]}, plot middle ${plotMid}`);
    await savePlot(join(dir, "empty.png"), []);
    const empty = await readPlot(join(dir, "empty.png"));
    assert.deepEqual([empty.img.width, empty.img.height], [640, 400]);
  });
});
