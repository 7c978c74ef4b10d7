// The tutorial's PyTorch weights in and out. The fixture (tests/fixtures/torch_parity.py, written by PyTorch 1.13):
// width-8 UNet, UNet_conditional (3 classes) and the later variant without bot2, and their outputs for fixed inputs.
// PARITY_DIR=/tmp/w64 runs the parity test on the script's width-64 output instead.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { join } from "node:path";
import { setBackend } from "../kernels/backend.ts";
import { type Tensors } from "../weights/weights.ts";
import { UNet } from "../modules.ts";
import {
  loadTorchModel,
  readTorchFile,
  torchFileMetadata,
  torchStateDict,
  writeTorchFile,
} from "../weights/pytorch.ts";
import { DEFAULTS } from "../run/config.ts";
import { diffusionMetadata, loadFile } from "../run/trained.ts";
import { zip } from "../weights/torchsave.ts";

const fixtures = new URL("./fixtures/", import.meta.url).pathname;
const dir = Deno.env.get("PARITY_DIR") ?? fixtures;
const width = Deno.env.get("PARITY_WIDTH") ?? "8";
const file = (name: string) => join(dir, `unet_w${width}${name}.pt`);
const tmp = () => Deno.makeTempDir({ prefix: "ddpm_pt_" });

/** max |a - b| / max |b|: the difference relative to the output's scale. */
const relDiff = (a: Float32Array, b: Float32Array) =>
  a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0) / b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

for (const backend of ["wasm", "cpu"]) {
  Deno.test(`${backend}: the U-Net computes what the tutorial's computes in PyTorch (≤ 1e-4 relative)`, async () => {
    await setBackend(backend as "wasm" | "cpu", () => {});
    const io = readTorchFile(file("_io"));
    const get = (k: string) => io.get(k)!;
    const x = tf.tensor(get("x").values, get("x").shape).transpose([0, 2, 3, 1]) as tf.Tensor4D; // NCHW → NHWC
    const t = tf.tensor1d(get("t").values), y = tf.tensor1d(get("y").values, "int32");
    for (
      const [model, fixture, labels] of [["", "unet", null], ["_cond", "cond", null], ["_cond", "cond_y", y], [
        "_nodeep",
        "nodeep",
        null,
      ]] as const
    ) {
      const m = loadTorchModel(file(model));
      const out = tf.tidy(() => m.forward(x, t, labels).transpose([0, 3, 1, 2]));
      const diff = relDiff(await out.data() as Float32Array, get(fixture).values);
      console.log(
        `  ${backend} width ${m.width} ${fixture}: max |ours - torch| / max |torch| = ${diff.toExponential(2)}`,
      );
      assert.ok(diff <= 1e-4, `${fixture}: ${diff}`);
      assert.equal(m.removeDeepConv, model === "_nodeep");
      tf.dispose([out]);
      m.dispose();
    }
    tf.dispose([x, t, y]);
  });
}

Deno.test("an export holds the same weights in PyTorch's layout, as .safetensors and as .pt", async () => {
  await setBackend("wasm", () => {});
  const out = await tmp();
  for (const name of ["", "_cond", "_nodeep"]) {
    const original = readTorchFile(join(fixtures, `unet_w8${name}.pt`)),
      m = loadTorchModel(join(fixtures, `unet_w8${name}.pt`));
    const sd = await torchStateDict(m.weights);
    m.dispose();
    for (const ext of [".safetensors", ".pt"]) {
      await writeTorchFile(join(out, `x${ext}`), sd);
      const back = readTorchFile(join(out, `x${ext}`));
      assert.deepEqual([...back.keys()], [...original.keys()]); // the tutorial's state_dict order
      for (const [k, t] of original) assert.deepEqual(back.get(k), t, k);
    }
  }
  await Deno.remove(out, { recursive: true });
});

Deno.test("an export names a diffusion other than the tutorial's in the .safetensors metadata, and loadFile reads it", async () => {
  await setBackend("wasm", () => {});
  const out = await tmp(), sd = readTorchFile(join(fixtures, "unet_w8.pt"));
  const v = { ...DEFAULTS, prediction: "v", schedule: "cosine", noiseSteps: 500 } as const;
  await writeTorchFile(join(out, "v.safetensors"), sd, diffusionMetadata(v));
  await writeTorchFile(join(out, "v.pt"), sd, diffusionMetadata(v)); // (torch.save's zip has no metadata)
  const read = (name: string) => {
    const { model, config } = loadFile(join(out, name), 16);
    model.dispose();
    return [config.prediction, config.schedule, config.noiseSteps, config.imageSize];
  };
  assert.deepEqual(read("v.safetensors"), ["v", "cosine", 500, 16]);
  assert.deepEqual(read("v.pt"), ["eps", "linear", 1000, 16]); // the tutorial's
  assert.deepEqual(torchFileMetadata(join(out, "v.pt")), {});
  await Deno.remove(out, { recursive: true });
});

Deno.test("bad PyTorch files: one line naming the problem, and no code in a pickle is run", async () => {
  await setBackend("wasm", () => {});
  const out = await tmp(), pt = Deno.readFileSync(join(fixtures, "unet_w8.pt"));
  const write = (name: string, bytes: Uint8Array) => (Deno.writeFileSync(join(out, name), bytes), join(out, name));
  const fails = (path: string, what: RegExp) => assert.throws(() => loadTorchModel(path), what);
  fails(write("half.pt", pt.subarray(0, pt.length >> 1)), /half\.pt is not a readable PyTorch file \(no zip directory/);
  const flipped = pt.slice();
  flipped[pt.length - 2000] ^= 1; // a bit of a storage
  fails(write("flip.pt", flipped), /flip\.pt: unet_w8\/data\/0 is damaged \(CRC-32 differs\)/);
  fails(write("text.pt", new TextEncoder().encode("not a checkpoint at all")), /neither a PyTorch/);
  const pickle = (body: string) => zip([["a/data.pkl", new Uint8Array([0x80, 2, ...new TextEncoder().encode(body)])]]);
  // the classic: posix.system("touch PWNED") by REDUCE; refused at the GLOBAL, before anything is called
  fails(write("evil.pt", pickle(`cposix\nsystem\nX\x0b\x00\x00\x00touch PWNED\x85R.`)), /refers to posix\.system/);
  fails(write("list.pt", pickle("]q\x00.")), /pickle opcode 0x5d/);
  fails(
    write("args.pt", pickle("ctorch._utils\n_rebuild_tensor_v2\n)R.")),
    /not a readable state_dict \(a malformed tensor\)/,
  );
  // keys: missing, unexpected, mis-shaped (written as .safetensors), a DDP "module." prefix is fine
  const sd = readTorchFile(join(fixtures, "unet_w8.pt"));
  const variant = async (name: string, edit: (m: Tensors) => void) => {
    const m = new Map(sd);
    edit(m);
    await writeTorchFile(join(out, name), m);
    return join(out, name);
  };
  fails(
    await variant("missing.safetensors", (m) => m.delete("sa4.mha.in_proj_bias")),
    /missing key sa4\.mha\.in_proj_bias/,
  );
  fails(
    await variant("extra.safetensors", (m) => m.set("sa7.ln.weight", sd.get("sa6.ln.weight")!)),
    /unexpected key sa7\.ln\.weight/,
  );
  const wrong = { shape: [3, 9], values: new Float32Array(27) };
  fails(
    await variant("shape.safetensors", (m) => m.set("outc.bias", wrong)),
    /outc\.bias has shape \[3,9\], .* needs \[3\]/,
  );
  const ddp = await variant("ddp.safetensors", (m) => {
    for (const [k, v] of sd) m.delete(k), m.set(`module.${k}`, v);
  });
  const model: UNet = loadTorchModel(ddp);
  assert.equal(model.width, 8);
  model.dispose();
  await Deno.remove(out, { recursive: true });
});
