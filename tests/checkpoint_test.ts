import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { join } from "node:path";
import { setBackend } from "../kernels/backend.ts";
import { assignWeights, saveWeights } from "../weights/checkpoint.ts";
import { UNet } from "../modules.ts";

await setBackend("wasm", () => {});
const fixtures = new URL("./fixtures/", import.meta.url).pathname;

Deno.test("a weights file of an older version (our own names) loads under the tutorial's names", async () => {
  // the names and shapes of a width-4 conditional U-Net (3 classes) as this project saved them before
  const old: [string, number[]][] = JSON.parse(Deno.readTextFileSync(join(fixtures, "old_names_w4.json")));
  const dir = await Deno.makeTempDir({ prefix: "ddpm_ckpt_" }), path = join(dir, "model.bin");
  const saved = new Map(old.map(([name, shape], i) => [name, tf.fill(shape, i)]));
  await saveWeights(path, saved);
  tf.dispose([...saved.values()]);
  const model = new UNet({ width: 4, numClasses: 3 });
  assignWeights(path, model.weights); // every weight found, of the right shape, none left over
  const value = async (name: string) => (await model.weights.get(name)!.data())[0];
  const index = (name: string) => old.findIndex(([n]) => n === name);
  for (
    const [was, is] of [
      ["inc.conv1.weight", "inc.double_conv.0.weight"],
      ["down.0.conv1.norm2.bias", "down1.maxpool_conv.1.double_conv.4.bias"],
      ["down.2.conv2.conv2.weight", "down3.maxpool_conv.2.double_conv.3.weight"],
      ["down.1.emb.weight", "down2.emb_layer.1.weight"],
      ["sa_down.0.mha.in_proj.weight", "sa1.mha.in_proj_weight"],
      ["sa_up.2.ff.3.bias", "sa6.ff_self.3.bias"],
      ["bot.1.norm1.weight", "bot2.double_conv.1.weight"],
      ["up.0.conv1.conv1.weight", "up1.conv.0.double_conv.0.weight"],
      ["up.2.conv2.norm1.bias", "up3.conv.1.double_conv.1.bias"],
      ["up.1.emb.bias", "up2.emb_layer.1.bias"],
      ["outc.bias", "outc.bias"],
      ["label_emb.weight", "label_emb.weight"],
    ]
  ) assert.equal(await value(is), index(was), `${was} -> ${is}`);
  model.dispose();
  await Deno.remove(dir, { recursive: true });
});
