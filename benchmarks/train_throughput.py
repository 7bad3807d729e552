"""Training throughput: a plain eager fp32 loop equivalent to the reference vs lordkit's training path.

Both run side by side in one process on the same random data, the same initial weights and the same
hyperparameters, with the perceptual (VGG16) loss:

  (a) the reference: its networks' formulation (lordkit.bench.reference: nn.Upsample, AdaIN through
      F.batch_norm on a (1, B*C, H, W) view), float32 images on the host, a shuffling DataLoader, a
      host-to-device copy per step, its perceptual loss (`RefVGGDistance`: VGG16 left trainable, its
      weight gradients computed and never used; both images through VGG under autograd), fp32, NCHW,
      for-each Adam, the loss read back (`.item()`) every step;
  (b) lordkit: `lordkit.training.train_latent` / `train_amortized` themselves — uint8 images
      resident on the device, batches gathered there, frozen VGG (the target's features without
      autograd), channels-last on the CPU, bf16 autocast + channels-last + fused Adam on CUDA, the
      loss read every `log_every` steps; with --cpu-bf16 also a row under CPU
      bf16 autocast (CPUs with AVX-512 BF16 or AMX).

The rows run interleaved (`Interleaved`): each on its own thread, one at a time, `--window` steps
each in turn with the order rotating, so that other processes' load falls on all rows alike.
Images/s are medians over the timed windows after warm-up (the device synchronized before each clock
read); the mean loss over the last steps of both is reported so that speed is not bought with a
different optimisation. VGG16 weights are random (written in torchvision's layout) unless
--vgg-weights names the real file: throughput does not depend on the values.

    python benchmarks/train_throughput.py                      # the paper's setting: 64 px, batch 128
    python benchmarks/train_throughput.py --batch-size 32 --steps 8 --warmup 2   # a CPU-sized run

Writes --out (benchmarks/results/train_throughput.json) and, run as a script, appends the same figures
as one line to benchmarks/results/train_throughput.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR
appends to DIR/train_throughput.jsonl instead).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from lordkit.bench.machine import cpu_flags, cpu_model
from lordkit.config import LordConfig
from lordkit.data.store import Dataset, DatasetMeta, StoreWriter
from lordkit.fsutil import atomic_write_json
from lordkit.bench.reference import RefAmortized, RefLatent, RefVGGDistance
from lordkit.losses import VGG16Features, content_penalty
from lordkit.bench.reference import reference_latent as reference_latent_net
from lordkit.models import LatentModel
from lordkit.modeldir import read_metrics, stage1_files, weights_path
from lordkit.training import train_amortized, train_latent

VGG_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
             (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_vgg_file(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, cin, cout in VGG_CONVS:
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(cout)
    torch.save(state, path)
    return path


def make_dataset(path: Path, n: int, img_size: int, channels: int, n_classes: int) -> Dataset:
    """Smooth random images (blurred noise), so the loss has something to learn."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w = StoreWriter(path, img_size, channels)
    for start in range(0, n, 512):
        m = min(512, n - start)
        small = rng.random((m, img_size // 8, img_size // 8, channels), dtype=np.float32)
        big = small.repeat(8, axis=1).repeat(8, axis=2)
        w.add((big * 255).astype(np.uint8), rng.integers(0, n_classes, m), -1)
    w.close(DatasetMeta(dataset_id="bench", class_names=[f"c{i}" for i in range(n_classes)],
                        img_size=img_size, channels=channels, n_imgs=0))
    return Dataset(path)


class Interleaved:
    """Runs training loops in turn, `window` steps at a time, so that other processes' load and clock
    changes fall on every row alike: the only fair way to compare rows on a shared machine.

    Each row is a function taking an `on_step(step)` callback; it runs on its own thread, and the
    callback parks it after its `warmup`-th step and after every `window` steps from there, until the
    conductor lets it go on. Only one row runs at any time; a window's time is from its release to its
    next park (the device synchronized before the park). Rows go in a rotating order per round.
    """

    def __init__(self, device: torch.device, batch_size: int, warmup: int, window: int):
        self.device, self.batch_size, self.warmup, self.window = device, batch_size, warmup, window

    def run(self, rows: dict[str, Callable[[Callable[[int], None]], object]]) -> dict[str, dict]:
        names = list(rows)
        go = {n: threading.Semaphore(0) for n in names}
        parked = {n: threading.Semaphore(0) for n in names}
        state: dict[str, dict] = {n: {"rates": [], "done": False, "error": None, "result": None} for n in names}

        def on_step_for(name: str) -> Callable[[int], None]:
            def on_step(step: int) -> None:
                if step >= self.warmup and (step - self.warmup) % self.window == 0:
                    sync(self.device)
                    parked[name].release()
                    go[name].acquire()
            return on_step

        def body(name: str) -> None:
            go[name].acquire()
            try:
                state[name]["result"] = rows[name](on_step_for(name))
            except BaseException as e:  # handed to the conductor, raised there
                state[name]["error"] = e
            finally:
                state[name]["done"] = True
                parked[name].release()

        threads = [threading.Thread(target=body, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        for n in names:  # warm-up: each row up to its first park, untimed, one after the other
            go[n].release()
            parked[n].acquire()
        rnd = 0
        while not all(state[n]["done"] for n in names):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for n in order:
                if state[n]["done"]:
                    continue
                t0 = time.perf_counter()
                go[n].release()
                parked[n].acquire()
                if not state[n]["done"]:
                    state[n]["rates"].append(self.window * self.batch_size / (time.perf_counter() - t0))
            rnd += 1
        for t in threads:
            t.join()
        for n in names:
            if state[n]["error"] is not None:
                raise state[n]["error"]
        return {n: {"img_per_sec": statistics.median(state[n]["rates"]) if state[n]["rates"] else float("nan"),
                    "windows": len(state[n]["rates"]), "result": state[n]["result"]} for n in names}


def reference_parts(ds: Dataset, vgg_file: Path, device: torch.device,
                    batch_size: int) -> tuple[RefVGGDistance, torch.utils.data.DataLoader]:
    """What both reference stages build: its perceptual loss (VGG16 left trainable, as the reference
    never freezes it, both images through VGG under autograd) and a shuffling DataLoader over float32
    images on the host."""
    loss_fn = RefVGGDistance(VGG16Features.from_file(vgg_file)).to(device)
    imgs = torch.from_numpy(np.asarray(ds.images, dtype=np.float32) / 255.0).permute(0, 3, 1, 2)  # (N, C, H, W)
    data = torch.utils.data.TensorDataset(imgs, torch.arange(len(ds)), torch.from_numpy(np.asarray(ds.class_ids)))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                                         pin_memory=device.type == "cuda")
    return loss_fn, loader


def reference_steps(loader: torch.utils.data.DataLoader, loss_of: Callable[[Tensor, Tensor, Tensor], Tensor],
                    opt: torch.optim.Optimizer, sched, device: torch.device, n_steps: int,
                    on_step: Callable[[int], None]) -> list[float]:
    """The reference's loop: each batch copied to the device, the loss read back every step."""
    losses: list[float] = []
    while len(losses) < n_steps:
        for img, img_id, class_id in loader:
            loss = loss_of(img.to(device), img_id.to(device), class_id.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())  # a host sync every step, as the reference's progress bar does
            on_step(len(losses))
            if len(losses) == n_steps:
                break
    return losses


def reference_latent(ds: Dataset, cfg: LordConfig, vgg_file: Path, device: torch.device, n_steps: int,
                     on_step: Callable[[int], None]) -> tuple[list[float], RefLatent]:
    """(a) Stage 1 the way the reference runs it, from lordkit's initial weights for the same seed."""
    lc = cfg.latent
    torch.manual_seed(lc.seed)
    model = reference_latent_net(LatentModel(cfg.model), cfg.model).to(device)
    loss_fn, loader = reference_parts(ds, vgg_file, device, lc.batch_size)
    opt = torch.optim.Adam([
        {"params": list(model.generator.parameters()) + list(model.modulation.parameters()), "lr": lc.lr_generator},
        {"params": list(model.content_embedding.parameters()) + list(model.class_embedding.parameters()),
         "lr": lc.lr_latent}], betas=lc.betas)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps, eta_min=lc.lr_min)

    def loss_of(img: Tensor, img_id: Tensor, class_id: Tensor) -> Tensor:
        out, content_code, _ = model(img_id, class_id)  # the content noise: the embedding's, in training mode
        return loss_fn(out, img) + lc.content_decay * content_penalty(content_code)

    model.train()
    return reference_steps(loader, loss_of, opt, sched, device, n_steps, on_step), model


def reference_amortized(ds: Dataset, cfg: LordConfig, latent: RefLatent, vgg_file: Path, device: torch.device,
                        n_steps: int, on_step: Callable[[int], None]) -> list[float]:
    """(a) Stage 2 the way the reference runs it: its encoders, stage 1's modulation and generator."""
    ac = cfg.amortized
    torch.manual_seed(ac.seed)
    latent = latent.to(device).eval()
    model = RefAmortized(cfg.model)
    model.modulation.load_state_dict(latent.modulation.state_dict())
    model.generator.load_state_dict(latent.generator.state_dict())
    model = model.to(device)
    loss_fn, loader = reference_parts(ds, vgg_file, device, ac.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=ac.lr, betas=ac.betas)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps, eta_min=ac.lr_min)

    def loss_of(img: Tensor, img_id: Tensor, class_id: Tensor) -> Tensor:
        with torch.no_grad():
            content_target = latent.content_embedding(img_id)
            class_target = latent.class_embedding(class_id)
        out, content_code, class_code = model(img)
        return (loss_fn(out, img) + ac.content_weight * (content_code - content_target).pow(2).mean()
                + ac.class_weight * (class_code - class_target).pow(2).mean())

    model.train()
    return reference_steps(loader, loss_of, opt, sched, device, n_steps, on_step)


def lordkit_run(stage: str, ds: Dataset, model_dir: Path, cfg: LordConfig, vgg_file: Path, device: str,
                on_step: Callable[[int], None], compile: bool, cpu_bf16: bool = False) -> list[float]:
    """(b) The real training functions; losses read back from metrics.jsonl."""
    kw = dict(device=device, vgg_weights=str(vgg_file), show_progress=False, tensorboard=False,
              on_step=on_step, compile=compile, cpu_bf16=cpu_bf16)
    if stage == "latent":
        train_latent(ds, model_dir, cfg, **kw)
    else:
        train_amortized(ds, model_dir, **kw)
    return [r["loss"] for r in read_metrics(model_dir) if r["stage"] == stage]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per run (after warm-up)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (cudnn autotune, allocator)")
    ap.add_argument("--window", type=int, default=0, help="steps per timed window (default: warmup)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--vgg-weights", default=None, help="real torchvision VGG16 file (default: random weights)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile lordkit's path")
    ap.add_argument("--cpu-bf16", action="store_true", help="also lordkit's path under CPU bf16 autocast")
    ap.add_argument("--stages", default="latent,amortized")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. model.adain_dim=128")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args(argv)
    if any(s not in ("latent", "amortized") for s in args.stages.split(",")):
        ap.error(f"--stages takes latent and/or amortized, got {args.stages!r}")
    if args.warmup < 1 or args.window < 0 or args.steps < (args.window or args.warmup):
        ap.error("--warmup must be >= 1, --window >= 0 and --steps at least one window")
    return args


class LatentReference:
    """The reference loop's stage-1 row; keeps the networks it trained, which start its stage 2."""

    def __init__(self, ds: Dataset, cfg: LordConfig, vgg_file: Path, device: torch.device, n_steps: int):
        self.ds, self.cfg, self.vgg_file, self.device, self.n_steps = ds, cfg, vgg_file, device, n_steps
        self.nets: RefLatent | None = None

    def __call__(self, on_step: Callable[[int], None]) -> list[float]:
        losses, self.nets = reference_latent(self.ds, self.cfg, self.vgg_file, self.device, self.n_steps, on_step)
        return losses


def stage_row(got: dict, window: int, bf16: bool) -> dict:
    """One stage's figures from the conductor's timings of its rows."""
    row = {"reference_img_per_sec": got["reference"]["img_per_sec"],
           "reference_loss_last": float(np.mean(got["reference"]["result"][-window:])),
           "lordkit_img_per_sec": got["lordkit"]["img_per_sec"],
           "lordkit_loss_last": float(got["lordkit"]["result"][-1]),
           "timed_windows": got["reference"]["windows"]}
    row["speedup"] = row["lordkit_img_per_sec"] / row["reference_img_per_sec"]
    if bf16:
        row["lordkit_bf16_img_per_sec"] = got["lordkit_bf16"]["img_per_sec"]
        row["lordkit_bf16_loss_last"] = float(got["lordkit_bf16"]["result"][-1])
        row["bf16_speedup"] = row["lordkit_bf16_img_per_sec"] / row["reference_img_per_sec"]
    return row


def print_row(stage: str, row: dict, n_steps: int) -> None:
    extra = ""
    if "bf16_speedup" in row:
        extra = (f"  bf16 {row['lordkit_bf16_img_per_sec']:8.1f} img/s x{row['bf16_speedup']:.2f} "
                 f"loss {row['lordkit_bf16_loss_last']:.4f}")
    print(f"{stage:>9}: reference {row['reference_img_per_sec']:8.1f} img/s  lordkit "
          f"{row['lordkit_img_per_sec']:8.1f} img/s  x{row['speedup']:.2f}   loss after {n_steps} steps: "
          f"reference {row['reference_loss_last']:.4f}  lordkit {row['lordkit_loss_last']:.4f}{extra}", flush=True)


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the benchmark; `record`: also append the figures to the result file (what the script does)."""
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    window = args.window or args.warmup
    n_steps = args.warmup + (args.steps // window) * window
    # One epoch of the generated data is the whole run; --set comes after these and may change them.
    # No collapse probe: one epoch of random images is a throughput run, not a training run.
    stage = dict(batch_size=args.batch_size, n_epochs=1, log_every=window, loss="vgg", collapse_threshold=0.0)
    cfg = LordConfig().replace(model=dict(img_size=args.img_size), latent=stage, amortized=stage)
    cfg = cfg.apply_overrides(args.set)
    results: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                     "cpu": cpu_model(), "isa": cpu_flags(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "img_size": args.img_size, "batch_size": args.batch_size,
                     "warmup_steps": args.warmup, "timed_steps": n_steps - args.warmup, "stages": {}}
    print(f"CPU {results['cpu']}; instruction sets: {', '.join(results['isa']) or 'none found'}; "
          f"{results['gpu'] or 'no GPU'}; torch {results['torch']}, {results['threads']} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vgg_file = Path(args.vgg_weights) if args.vgg_weights else random_vgg_file(tmp / "vgg16-random.pth")
        ds = make_dataset(tmp / "data", n_steps * args.batch_size, args.img_size, 3, 16)
        cfg = cfg.replace(model=dict(n_imgs=len(ds), n_classes=16))
        latent_ref = None
        conductor = Interleaved(device, args.batch_size, args.warmup, window)
        dirs = {"lordkit": tmp / "model", "lordkit_bf16": tmp / "model-bf16"}
        for stage in args.stages.split(","):
            if stage == "amortized":
                if latent_ref is None:
                    _, latent_ref = reference_latent(ds, cfg, vgg_file, device, 1, lambda step: None)
                if not weights_path(tmp / "model", "latent").exists():
                    train_latent(ds, tmp / "model", cfg, device=str(device), vgg_weights=str(vgg_file),
                                 show_progress=False, tensorboard=False)
                if args.cpu_bf16:
                    dirs["lordkit_bf16"].mkdir(exist_ok=True)
                    for src, dst in zip(stage1_files(tmp / "model"), stage1_files(dirs["lordkit_bf16"])):
                        dst.write_bytes(src.read_bytes())
            reference = (LatentReference(ds, cfg, vgg_file, device, n_steps) if stage == "latent" else
                         functools.partial(reference_amortized, ds, cfg, latent_ref, vgg_file, device, n_steps))
            rows = {"reference": reference,
                    "lordkit": functools.partial(lordkit_run, stage, ds, dirs["lordkit"], cfg, vgg_file, str(device),
                                                 compile=args.compile)}
            if args.cpu_bf16:
                rows["lordkit_bf16"] = functools.partial(lordkit_run, stage, ds, dirs["lordkit_bf16"], cfg, vgg_file,
                                                         str(device), compile=args.compile, cpu_bf16=True)
            got = conductor.run(rows)
            if stage == "latent":  # the reference's stage-1 networks start its stage 2
                latent_ref = reference.nets
            results["stages"][stage] = row = stage_row(got, window, args.cpu_bf16)
            print_row(stage, row, n_steps)
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('train_throughput', results, args=args, argv=argv)}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main(record=True) else 1)
