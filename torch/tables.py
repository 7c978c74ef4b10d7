#!/usr/bin/env python3
"""The README's speed tables, measured: PyTorch (torch_ref.py) and ours (deno task bench) interleaved, row by row.

  /usr/bin/python3 torch/tables.py cpu [--rounds 2]   # PyTorch on every core; ours on every core with the wasm kernels,
                                                    # and native (OpenBLAS) on 1 thread and on every core
  python3 torch/tables.py gpu                         # PyTorch --device cuda; ours --backend webgpu; then GPU time by kernel

Run from the repository root. Prints each command's JSON line as it goes, then the table in Markdown.
"""
import argparse, json, os, platform, shutil, subprocess, sys

CPU_ROWS = [  # (what, flags, steps)
    ("train 16 px, b 16, w 16 (the demo's)", "--image-size 16 --batch-size 16 --width 16 --mode train", 5),
    ("train 32 px, b 4, w 64", "--image-size 32 --batch-size 4 --width 64 --mode train", 3),
    ("train 32 px, b 8, w 32", "--image-size 32 --batch-size 8 --width 32 --mode train", 3),
    ("train 64 px, b 2, w 64", "--image-size 64 --batch-size 2 --width 64 --mode train", 3),
    ("sample (one forward) 32 px, b 4, w 64", "--image-size 32 --batch-size 4 --width 64 --mode sample", 5),
]
BIG = ("train 64 px, b 12, w 64 (one step)", "--image-size 64 --batch-size 12 --width 64 --mode train", 1)  # round 1 only
GPU_ROWS = [
    ("train 32 px, b 4, w 64", "--image-size 32 --batch-size 4 --width 64 --mode train", 5),
    ("train 64 px, b 12, w 64 (the tutorial's)", "--image-size 64 --batch-size 12 --width 64 --mode train", 5),
    ("sample (one forward) 64 px, b 12, w 64", "--image-size 64 --batch-size 12 --width 64 --mode sample", 5),
]


def run(cmd):
    """Runs a command; returns its last JSON line (and prints it)."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    print(lines[-1], file=sys.stderr, flush=True)
    return json.loads(lines[-1])


def torch_cmd(flags, steps, device="cpu"):
    threads = ["--threads", str(os.cpu_count())] if device == "cpu" else []
    return [sys.executable, "torch/torch_ref.py", *threads, "--device", device, "--steps", str(steps), *flags.split()]


DENO = ["deno"] if shutil.which("deno") else ["npx", "-y", "deno@2.9.6"]


def ours_cmd(flags, steps, extra):
    return [*DENO, "task", "bench", "--steps", str(steps), *flags.split(), *extra]


def wasm_kernels(cmd):
    """The command with DDPM_NATIVE=0 (the wasm kernels, not the native products)."""
    return ["env", "DDPM_NATIVE=0", *cmd]


def ms(row):
    return row["step_ms_median"]


def fmt(values):
    """Milliseconds as "a / b ms", or seconds above 1 s."""
    if all(v >= 1000 for v in values):
        return " / ".join(f"{v / 1000:.2f}" for v in values) + " s"
    return " / ".join(f"{v:.0f}" for v in values) + " ms"


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown CPU"


def cpu(rounds, only):
    from torch_ref import refuse_reference_blas  # (beside this file)
    refuse_reference_blas()
    n = os.cpu_count()
    rows = [(what, flags, steps, []) for i, (what, flags, steps) in enumerate(CPU_ROWS + [BIG]) if only is None or i in only]
    for r in range(rounds):
        for what, flags, steps, results in rows:
            if r and (what, flags, steps) == BIG:
                continue
            torch = ms(run(torch_cmd(flags, steps)))
            wasm = ms(run(wasm_kernels(ours_cmd(flags, steps, ["--backend", "wasm", "--threads", str(n)]))))
            one = ms(run(ours_cmd(flags, steps, ["--backend", "wasm", "--threads", "1"])))
            alln = ms(run(ours_cmd(flags, steps, ["--backend", "wasm", "--threads", str(n)])))
            results.append((torch, wasm, one, alln))
    print(f"\n{cpu_name()}, {n} cores; PyTorch and ours on {n} threads unless said; rounds " +
          " / ".join(str(i + 1) for i in range(rounds)) + "\n")
    print(f"| step (image, batch, width) | PyTorch | ours, wasm kernels | ours, native, 1 thread | ours, native "
          f"| native / PyTorch | wasm kernels / PyTorch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for what, _, _, results in rows:
        torch, wasm, one, alln = zip(*results)
        ratio = " / ".join(f"{a / t:.2f}×" for t, a in zip(torch, alln))
        before = " / ".join(f"{w / t:.2f}×" for t, w in zip(torch, wasm))
        print(f"| {what} | {fmt(torch)} | {fmt(wasm)} | {fmt(one)} | {fmt(alln)} | {ratio} | {before} |")


def gpu():
    results = []
    for what, flags, steps in GPU_ROWS:
        torch = ms(run(torch_cmd(flags, steps, "cuda") + ["--untimed-steps", "2"]))
        ours = ms(run(ours_cmd(flags, steps, ["--backend", "webgpu", "--untimed-steps", "2"])))
        results.append((what, torch, ours))
    print("\n| step (image, batch, width) | PyTorch, CUDA | ours, `--backend webgpu` | ours / PyTorch |")
    print("| --- | ---: | ---: | ---: |")
    for what, torch, ours in results:
        print(f"| {what} | {torch:.1f} ms | {ours:.0f} ms | {ours / torch:.1f}× |")
    print("\nGPU time by kernel, one training step at 64 px, b 12, w 64:\n", flush=True)
    subprocess.run(["deno", "task", "bench", "--backend", "webgpu", "--image-size", "64", "--batch-size", "12", "--width",
                    "64", "--steps", "1", "--untimed-steps", "2", "--gpu-time", "--by-kernel"], check=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("table", choices=["cpu", "gpu"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", help="cpu: only these rows, e.g. 0,4 (0: the demo's, 5: 64 px b 12)")
    a = p.parse_args()
    if a.table == "cpu":
        cpu(a.rounds, None if a.rows is None else [int(i) for i in a.rows.split(",")])
    else:
        gpu()
