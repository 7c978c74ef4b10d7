#!/usr/bin/env python3
"""The tutorial's training loop (ddpm.py, ddpm_conditional.py) on N processes with DistributedDataParallel: a run of
`deno task train` continued on many GPUs (or CPUs), and its weights brought back to `deno task sample --weights`.

  deno task export --run runs/landscape --to landscape.pt
  torchrun --standalone --nproc_per_node=8 torch/train_ddp.py --data DIR --init landscape.pt --out models/landscape
  deno task sample --weights models/landscape/ema_ckpt.pt --n 16

Each process trains on its share of the images (DistributedSampler) in batches of --batch-size; DDP averages the
gradients, so a step is one step on N·batch images. The images are read and cropped as ours are (data/image_folder.ts,
data/transforms.ts), the schedule and the t range are ours (diffusion.ts). An image's crop, t and ε come from its own
generator, seeded by (--seed, epoch, image index): a run is the same for any N at the same N·batch.
Without torchrun, `python3 torch/train_ddp.py ...` is one process. Needs Debian's python3-torch and python3-torchvision;
--backend gloo trains on CPUs.
"""
import argparse
import copy
import math
import os
import pickle
import sys
import time
import zipfile
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms
from modules import UNet

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class UsageError(Exception):
    """A bad flag, folder or --init file: one line, exit code 2."""


def list_images(root):
    """Our image-folder layout (data/image_folder.ts): class sub-folders (labels = their sorted names, searched
    recursively), or a flat folder of images (one class); hidden names are left out."""
    if not os.path.isdir(root):
        raise UsageError(f"data folder not found: {root}")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not classes:
        files = [(os.path.join(root, e), 0) for e in entries if e.lower().endswith(IMAGE_EXTS)]
        return [os.path.basename(os.path.abspath(root))], files
    files = []
    for label, c in enumerate(classes):
        files += [(f, label) for f in images_under(os.path.join(root, c))]
    return classes, files


def images_under(folder):
    """The image files under folder, in sorted order, sub-folders where they sort."""
    found = []
    for e in sorted(e for e in os.listdir(folder) if not e.startswith(".")):
        path = os.path.join(folder, e)
        if os.path.isdir(path):
            found += images_under(path)
        elif e.lower().endswith(IMAGE_EXTS):
            found.append(path)
    return found


class ImageFolder(torch.utils.data.Dataset):
    """The images with the tutorial's transforms, Resize(1.25·size) and RandomResizedCrop(size, scale=(0.8, 1)) to
    [-1, 1], and each image's t ~ U{0..T-1} and ε ~ N(0, I) (Algorithm 1, lines 3-4), all from its own generator."""

    def __init__(self, root, size, noise_steps, seed):
        self.classes, self.files = list_images(root)
        if not self.files:
            raise UsageError(f"no .png/.jpg/.jpeg images found in {root}")
        self.transform = transforms.Compose([
            transforms.Resize(round(1.25 * size)),
            transforms.RandomResizedCrop(size, scale=(0.8, 1.0)),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ])
        self.noise_steps = noise_steps
        self.seed = seed
        self.epoch = 0

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[i]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(((self.seed * 1000003 + self.epoch) * 1000003 + i) % 2**63)
            x0 = self.transform(Image.open(path).convert("RGB"))
            t = torch.randint(0, self.noise_steps, ())
            noise = torch.randn_like(x0)
        return x0, label, t, noise


class Diffusion:
    """Our schedule (diffusion.ts): index i holds step t = i + 1 of the papers; β linear from 1e-4 to 0.02, or the
    cosine schedule of Nichol & Dhariwal (Eq. 17, β capped at 0.999). Computed in float64, as ours is."""

    def __init__(self, noise_steps=1000, beta_start=1e-4, beta_end=0.02, schedule="linear", device="cpu"):
        self.noise_steps = noise_steps
        i = torch.arange(noise_steps, dtype=torch.float64)
        if schedule == "cosine":
            f = lambda t: torch.cos((t / noise_steps + 0.008) / 1.008 * math.pi / 2) ** 2
            self.beta = torch.clamp(1 - f(i + 1) / f(i), max=0.999)
        else:
            self.beta = beta_start + (beta_end - beta_start) * i / max(1, noise_steps - 1)
        self.alpha = 1 - self.beta
        self.alpha_hat = torch.cumprod(self.alpha, dim=0)
        self.sqrt_alpha_hat = self.alpha_hat.sqrt().float().to(device)
        self.sqrt_one_minus_alpha_hat = (1 - self.alpha_hat).sqrt().float().to(device)

    def noise_images(self, x, t, noise):
        """Eq. 4: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε."""
        sqrt_alpha_hat = self.sqrt_alpha_hat[t][:, None, None, None]
        sqrt_one_minus_alpha_hat = self.sqrt_one_minus_alpha_hat[t][:, None, None, None]
        return sqrt_alpha_hat * x + sqrt_one_minus_alpha_hat * noise


class EMA:
    """The tutorial's EMA (ema.ts): a copy of the model for the first step_start_ema steps, then an average."""

    def __init__(self, beta):
        self.beta = beta
        self.step = 0

    @torch.no_grad()
    def step_ema(self, ema_model, model, step_start_ema=2000):
        if self.step < step_start_ema:
            ema_model.load_state_dict(model.state_dict())
        else:
            for ema_w, w in zip(ema_model.parameters(), model.parameters()):
                ema_w.mul_(self.beta).add_(w, alpha=1 - self.beta)  # w_ema ← β·w_ema + (1-β)·w
        self.step += 1


def read_init(path):
    """A state_dict written by `deno task export` or torch.save (a DDP "module." prefix dropped)."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError(f"--init {path}: reading .safetensors needs the safetensors package, which Debian does "
                             "not have; export as .pt instead (deno task export ... --to FILE.pt)")
        load = load_file
    else:
        load = lambda p: torch.load(p, map_location="cpu", weights_only=True)
    if not os.path.isfile(path):
        raise UsageError(f"--init {path}: no such file")
    if not path.endswith(".safetensors") and not zipfile.is_zipfile(path):
        raise UsageError(f"--init {path} is not a PyTorch file (torch.save writes a zip archive)")
    try:
        sd = load(path)
    except pickle.UnpicklingError:
        raise UsageError(f"--init {path} holds more than tensors (a whole model?): save model.state_dict()")
    except Exception as e:
        raise UsageError(f"--init {path} is not a readable PyTorch file ({str(e).splitlines()[0][:160]})")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"--init {path} holds a {type(sd).__name__}, not a state_dict of the tutorial's UNet")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "inc.double_conv.0.weight" not in sd:
        raise UsageError(f"--init {path} is not a state_dict of the tutorial's UNet (no inc.double_conv.0.weight)")
    return sd


def build_model(a, num_classes):
    """The tutorial's UNet (or UNet_conditional), at --width or the width of --init, with --init's weights."""
    sd = read_init(a.init) if a.init else None
    width = a.width or (sd["inc.double_conv.0.weight"].shape[0] if sd else 64)
    if sd is None:
        return UNet(width, num_classes=num_classes)
    has = sd["inc.double_conv.0.weight"].shape[0]
    if has != width:
        raise UsageError(f"--init {a.init} is a UNet of width {has}, not --width {width} (leave --width out)")
    classes = sd["label_emb.weight"].shape[0] if "label_emb.weight" in sd else None
    if classes != num_classes:
        what = f"a UNet_conditional(num_classes={classes})" if classes else "an unconditional UNet"
        want = f"{num_classes} classes (--conditional)" if num_classes else "no labels (no --conditional)"
        raise UsageError(f"--init {a.init} is {what}; the run has {want}")
    model = UNet(width, num_classes=num_classes, remove_deep_conv="bot2.double_conv.0.weight" not in sd)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        problems = "; ".join(line.strip() for line in str(e).splitlines()[1:])
        raise UsageError(f"--init {a.init} does not fit the tutorial's UNet of width {width}: {problems[:300]}")
    return model


def save(model, path):
    """torch.save(model.state_dict(), path), by way of a temporary file: a stopped run leaves no half file."""
    torch.save(model.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="a folder of images: class sub-folders, or images (one class)")
    p.add_argument("--out", default="models/ddp", help="where ckpt.pt and ema_ckpt.pt go (default models/ddp)")
    p.add_argument("--init", help="start from these weights: deno task export's .pt (or .safetensors, with the "
                   "safetensors package)")
    p.add_argument("--width", type=int, default=0, help="U-Net base width (default: --init's, else 64)")
    p.add_argument("--conditional", action="store_true", help="train with labels: class sub-folders")
    p.add_argument("--image-size", type=int, default=64, help="image side in px, divisible by 8 (default 64)")
    p.add_argument("--batch-size", type=int, default=12, help="images a step in EACH process (default 12)")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--max-steps", type=int, default=0, help="stop after N steps; 0: no limit")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    p.add_argument("--noise-steps", type=int, default=1000, help="T, the diffusion steps (default 1000)")
    p.add_argument("--schedule", choices=["linear", "cosine"], default="linear")
    p.add_argument("--label-drop", type=float, default=0.1, help="share of steps trained without labels, for CFG")
    p.add_argument("--ema-beta", type=float, default=0.995, help="EMA decay β (default 0.995)")
    p.add_argument("--ema-start", type=int, default=2000, help="steps of EMA warm-up (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="the initial weights (without --init), data order, crops, "
                   "t and noise")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per process (default 2)")
    p.add_argument("--backend", choices=["nccl", "gloo"], help="nccl: a GPU per process; gloo: CPUs (default: nccl "
                   "where CUDA is)")
    a = p.parse_args(argv)
    if a.image_size % 8 or a.image_size < 8:
        raise UsageError(f"--image-size {a.image_size}: must be divisible by 8")
    if a.width < 0 or a.width % 4:
        raise UsageError(f"--width {a.width}: must be divisible by 4")
    if a.batch_size < 1:
        raise UsageError(f"--batch-size {a.batch_size}: must be at least 1")
    a.backend = a.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if a.backend == "nccl" and not torch.cuda.is_available():
        raise UsageError("--backend nccl needs CUDA GPUs; use --backend gloo on CPUs")
    return a


def start_processes(backend):
    """The process group: torchrun's (its RANK, WORLD_SIZE, MASTER_ADDR in the environment), else one process."""
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def train(a, data, model, rank, world):
    """The tutorial's train(): AdamW, MSE on ε, labels dropped on a share of the steps, the EMA after each step."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if a.backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    num_classes = model.label_emb.num_embeddings if hasattr(model, "label_emb") else None
    model = model.to(device)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=a.seed)
    loader = DataLoader(data, batch_size=a.batch_size, sampler=sampler, num_workers=a.workers,
                        pin_memory=device.type == "cuda")
    ema = EMA(a.ema_beta)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    unused = bool(num_classes) and a.label_drop > 0  # label_emb has no gradient on a step without labels
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                  find_unused_parameters=unused)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=a.lr)
    mse = nn.MSELoss()
    diffusion = Diffusion(a.noise_steps, schedule=a.schedule, device=device)
    label_drops = torch.Generator().manual_seed(a.seed)  # the same draws on every rank: all drop the same steps
    total = len(loader) * a.epochs if not a.max_steps else min(a.max_steps, len(loader) * a.epochs)
    progress = Progress(total, world * a.batch_size) if rank == 0 else None
    if rank == 0:
        os.makedirs(a.out, exist_ok=True)
        what = f"UNet_conditional(num_classes={num_classes})" if num_classes else "UNet"
        width = model.inc.double_conv[0].out_channels
        processes = f"{world} process" + ("es" if world > 1 else "")
        classes = f"{len(data.classes)} class" + ("es" if len(data.classes) > 1 else "")
        start = f" from {a.init}" if a.init else ""
        print(f"{processes}, {a.backend} on {device.type}: {len(data)} images in {classes}, {a.batch_size} a process, "
              f"{world * a.batch_size} a step; {what} of width {width}{start}", flush=True)
    step = 0
    dropped = 0
    for epoch in range(a.epochs):
        sampler.set_epoch(epoch)
        data.epoch = epoch
        for images, labels, t, noise in loader:
            drop_labels = torch.rand((), generator=label_drops).item() < a.label_drop
            images, t, noise = images.to(device), t.to(device), noise.to(device)
            labels = labels.to(device) if num_classes and not drop_labels else None
            dropped += drop_labels  # the tutorial's np.random.random() < 0.1, for classifier-free guidance
            x_t = diffusion.noise_images(images, t, noise)  # Algorithm 1, with each image's t and ε (ImageFolder)
            predicted_noise = ddp(x_t, t, labels)
            loss = mse(noise, predicted_noise)  # ‖ε - ε_θ(x_t, t)‖²; DDP averages its gradients over the ranks
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if rank == 0:
                ema.step_ema(ema_model, model, step_start_ema=a.ema_start)
            step += 1
            step_loss = loss.detach().clone()
            dist.all_reduce(step_loss)  # Σ over the ranks
            if progress:
                progress.update(step, epoch + 1, a.epochs, step_loss.item() / world)
            if step == a.max_steps:
                break
        if rank == 0:
            save(model, os.path.join(a.out, "ckpt.pt"))
            save(ema_model, os.path.join(a.out, "ema_ckpt.pt"))
        if step == a.max_steps:
            break
    if rank == 0:
        drops = f" (labels dropped on {dropped} of {step} steps)" if num_classes else ""
        print(f"step {step}: ckpt.pt and ema_ckpt.pt in {a.out}{drops}", flush=True)


class Progress:
    """Our progress line (run/progress.ts): the step, the loss (smoothed) and images/s, every 5 s and at the end."""

    def __init__(self, total, per_step):
        self.total = total
        self.per_step = per_step
        self.t0 = time.perf_counter()
        self.last = 0
        self.smooth = None

    def update(self, step, epoch, epochs, loss):
        self.smooth = loss if self.smooth is None else 0.98 * self.smooth + 0.02 * loss
        now = time.perf_counter()
        if now - self.last < 5 and step < self.total:
            return
        self.last = now
        per_step = (now - self.t0) / step
        print(f"epoch {epoch}/{epochs} step {step}/{self.total} loss {self.smooth:.4f} "
              f"{self.per_step / per_step:.1f} img/s ETA {duration(per_step * (self.total - step))}", flush=True)


def duration(s):
    """Seconds as 12s, 3m05s or 1h07m (run/progress.ts)."""
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s // 60) % 60:02d}m"
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{round(s)}s"


def main(argv):
    rank = int(os.environ.get("RANK", 0))
    try:
        a = parse_args(argv)
        data = ImageFolder(a.data, a.image_size, a.noise_steps, a.seed)
        torch.manual_seed(a.seed)
        model = build_model(a, len(data.classes) if a.conditional else None)
    except UsageError as e:  # before the processes wait for each other
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    rank, world = start_processes(a.backend)
    train(a, data, model, rank, world)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
