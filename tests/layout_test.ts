// The layout a reader relies on: the design card's files at the root, the rest in folders whose imports go one way.
import assert from "node:assert/strict";
import { join, normalize } from "node:path";
import { ROOT } from "./helpers.ts";

const FOLDERS = ["run", "data", "weights", "kernels", "commands"];
const ROOT_FILES = ["diffusion.ts", "ema.ts", "mod.ts", "modules.ts", "train.ts", "utils.ts"];
const tsIn = (dir: string) =>
  [...Deno.readDirSync(join(ROOT, dir))].filter((e) => e.isFile && e.name.endsWith(".ts")).map((e) => e.name);
const files = [...tsIn("."), ...FOLDERS.flatMap((d) => tsIn(d).map((f) => `${d}/${f}`))].sort();
const text = new Map(files.map((f) => [f, Deno.readTextFileSync(join(ROOT, f))]));

/** The project files a file imports (statically, with import() or as a worker's URL), as paths from the root. */
const importsOf = (f: string) => {
  const code = text.get(f)!.split("\n").filter((l) => !/^\s*(\/\/|\*|\/\*)/.test(l)).join("\n"); // (not comments)
  const specs = [...code.matchAll(/(?:from|import\(?|new URL\()\s*"(\.\.?\/[\w./]+\.ts)"/g)].map((m) => m[1]);
  return specs.map((s) => normalize(join(f, "..", s)));
};

Deno.test("the root holds the design card's files; the rest is in a few folders", () => {
  assert.deepEqual(tsIn(".").sort(), ROOT_FILES);
  for (const d of FOLDERS) assert.ok(tsIn(d).length > 0, d);
});

Deno.test("the import graph has no cycle", () => {
  const state = new Map<string, "open" | "done">();
  const visit = (f: string, path: string[]) => {
    if (state.get(f) === "done") return;
    assert.notEqual(state.get(f), "open", `import cycle: ${[...path, f].join(" -> ")}`);
    state.set(f, "open");
    for (const g of importsOf(f)) visit(g, [...path, f]);
    state.set(f, "done");
  };
  for (const f of files) visit(f, []);
  assert.ok(importsOf("train.ts").includes("run/run.ts")); // the parser does see imports
  assert.ok(importsOf("data/image_folder.ts").includes("data/decode_worker.ts")); // and workers
});

const PAPER = ["diffusion.ts", "modules.ts", "ema.ts"];
/** A file's group: the paper's three files, a folder, or the tutorial's scripts at the root (train, utils, mod). */
const groupOf = (f: string) => PAPER.includes(f) ? "paper" : f.includes("/") ? f.split("/")[0] : "tutorial";
const EVERYTHING_BUT_COMMANDS = ["paper", "tutorial", "run", "data", "weights", "kernels"];
/** What each group may import. */
const MAY_IMPORT: Record<string, string[]> = {
  paper: ["paper", "kernels"],
  kernels: ["kernels"],
  data: ["data", "kernels"],
  weights: ["weights", "paper", "kernels"],
  run: EVERYTHING_BUT_COMMANDS,
  tutorial: EVERYTHING_BUT_COMMANDS,
  commands: [...EVERYTHING_BUT_COMMANDS, "commands"],
};

Deno.test("imports go one way: the paper imports only the kernels; data, weights and kernels nothing of the run", () => {
  for (const f of files) {
    for (const g of importsOf(f)) {
      assert.ok(MAY_IMPORT[groupOf(f)].includes(groupOf(g)), `${f} (${groupOf(f)}) imports ${g} (${groupOf(g)})`);
    }
  }
  assert.deepEqual(importsOf("diffusion.ts"), ["kernels/backend.ts"]);
});

Deno.test("no file imports a task's script", () => {
  const tasks = JSON.parse(Deno.readTextFileSync(join(ROOT, "deno.json"))).tasks as Record<string, { command: string }>;
  const scripts = Object.values(tasks).flatMap((t) =>
    [...t.command.matchAll(/deno run .*? ([\w/]+\.ts)/g)].map((m) => m[1])
  );
  assert.ok(scripts.includes("commands/sample.ts") && scripts.includes("train.ts"), scripts.join());
  for (const f of files) {
    const used = importsOf(f).filter((g) => scripts.includes(g) && g !== "train.ts");
    assert.deepEqual(used, [], `${f} imports the script(s) ${used}`);
  }
});
