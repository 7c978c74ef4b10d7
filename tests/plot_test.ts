// Tests of the loss curve's PNG.
import assert from "node:assert/strict";
import { join } from "node:path";
import { decode, Image } from "imagescript";
import { savePlot } from "../run/plot.ts";
import { withTempDir } from "./helpers.ts";

Deno.test("savePlot writes a PNG; log scale for values over > 2 decades", async () => {
  await withTempDir(async (dir) => {
    // Exponential decay over 4 decades: a straight line on a log axis, so at
    // mid-x the curve is near mid-height (on a linear axis it would hug the bottom).
    const ys = Array.from({ length: 401 }, (_, i) => 10 ** (-i / 100));
    await savePlot(join(dir, "loss.png"), ys, { title: "loss", xlabel: "step" });
    const img = (await decode(await Deno.readFile(join(dir, "loss.png")))) as Image;
    assert.equal(img.width, 640);
    assert.equal(img.height, 400);
    const blue = (x: number) => {
      for (let y = 0; y < img.height; y++) {
        const [r, g, b] = img.bitmap.subarray((y * img.width + x) * 4);
        if (b > 150 && r < 60 && g < 110) return y;
      }
      return -1;
    };
    const mid = blue(Math.round(img.width / 2 + 28)), plotMid = (34 + 400 - 52) / 2;
    assert.ok(Math.abs(mid - plotMid) < 30, `curve at y=${mid}, plot middle ${plotMid}`);
    await savePlot(join(dir, "flat.png"), [1, NaN, 1], { xs: [0, 1, 2] }); // degenerate data
    await savePlot(join(dir, "empty.png"), []);
    assert.ok((await Deno.stat(join(dir, "empty.png"))).size > 100);
  });
});
