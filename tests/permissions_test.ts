// The tasks of deno.json: a menu (a description each) that asks for the permissions each command uses, never -A; a
// permission withheld is one line that names its flag.
import assert from "node:assert/strict";
import { join } from "node:path";
import { assertOneLine, ROOT, withTempDir } from "./helpers.ts";

type Task = { description: string; command: string };
const TASKS = JSON.parse(Deno.readTextFileSync(join(ROOT, "deno.json"))).tasks as Record<string, Task>;

/** The permission flags of a `deno run FLAGS script.ts ...` task. */
const flagsOf = (task: string) => TASKS[task].command.split(" ").filter((w) => /^-[RWAEPS]$|^--allow-/.test(w));

/** `deno run --no-prompt FLAGS script ...args` from the repository's root (as `deno task` runs it). */
async function runWith(flags: string[], script: string, ...args: string[]) {
  return await runIn({ ...Deno.env.toObject(), NO_COLOR: "1" }, flags, script, ...args);
}

/** runWith, in exactly the environment `env`. */
async function runIn(env: Record<string, string>, flags: string[], script: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...flags, script, ...args],
    cwd: ROOT,
    stdin: "null",
    env,
    clearEnv: true,
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

/** A training run of seconds: 8 px, width 4, 8 images, one step, a sample grid of 2 DDIM steps, on wasm. */
const tinyRun = (out: string) =>
  ["--max-steps", "1", "--image-size", "8", "--width", "4", "--count", "8", "--n-samples", "1"].concat(
    ["--sampler", "ddim", "--sample-steps", "2", "--backend", "wasm", "--out", out, "--name", "run", "--overwrite"],
  );

Deno.test("every task says what it does and none asks for all permissions", () => {
  for (const [name, task] of Object.entries(TASKS)) {
    assert.ok(task.description?.length > 20, `${name} has no description`);
    const words = task.command.split(" ");
    assert.ok(!words.includes("-A") && !words.includes("--allow-all"), `${name}: ${task.command}`);
  }
  assert.deepEqual(flagsOf("demo").filter((f) => f.startsWith("--allow-ffi")), [
    // imagescript's PNG and JPEG codecs and OpenBLAS only (tfjs-node-gpu: deno task gpu)
    "--allow-ffi=node_modules/.deno/imagescript@1.3.1,/usr/lib/x86_64-linux-gnu/openblas-pthread,/usr/lib/aarch64-linux-gnu/openblas-pthread",
  ]);
});

Deno.test("the demo task's permissions are enough to train, and a withheld one is one line naming its flag", async () => {
  await withTempDir(async (dir) => {
    const ok = await runWith(flagsOf("demo"), "train.ts", ...tinyRun(dir));
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /backend wasm, \d+ threads?, native \(OpenBLAS/); // (tests/bring.sh installs it)
    const noBlas = flagsOf("demo").map((f) => f.startsWith("--allow-ffi=") ? f.split(",")[0] : f);
    const wasm = await runWith(noBlas, "train.ts", ...tinyRun(dir), "--name", "wasm");
    assert.match(wasm.stdout, /wasm kernels: native products need --allow-ffi=\/usr\/lib\/\S+openblas/);
    assert.ok((await Deno.stat(join(dir, "run", "checkpoint", "model.bin"))).isFile);
    const noWrite = await runWith(flagsOf("demo").filter((f) => f !== "-W"), "train.ts", ...tinyRun(dir));
    assertOneLine(noWrite, 1, "--allow-write");
    const gpu = await runWith(flagsOf("demo"), "train.ts", ...tinyRun(dir), "--backend", "tensorflow");
    assertOneLine(gpu, 1, "--allow-ffi");
    // the backend chosen by probing (WebGPU's among them) where XDG_RUNTIME_DIR is unset: no "error:" line of Mesa's
    const { XDG_RUNTIME_DIR: _, ...unset } = Deno.env.toObject();
    const auto = await runIn(
      { ...unset, NO_COLOR: "1" },
      flagsOf("demo"),
      "train.ts",
      ...tinyRun(dir),
      "--backend",
      "auto",
    );
    assert.equal(auto.code, 0, auto.stderr);
    assert.ok(!auto.stderr.includes("XDG_RUNTIME_DIR"), auto.stderr);
  });
});
