"""Train the embedded ``vitaccel-digits`` ViT and write its checkpoint.

Usage::

    python -m golden.embedded.train_digits                 # writes golden/embedded/vitaccel_digits.safetensors
    python -m golden.embedded.train_digits -o /tmp/d.safetensors --epochs 5

AdamW with a cosine learning-rate schedule and a one-epoch warm-up, label smoothing 0.1, random
translations by up to one pixel (zero padding) as the only augmentation; everything seeded
(``torch.manual_seed``, single-threaded deterministic CPU kernels), so the same torch version on the
same CPU reproduces the checkpoint. Prints the accuracy on the calibration and test splits.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


from .digits import CHECKPOINT, MODEL_NAME, build_model, digits_loader, evaluate_fp, load_digits_split


def _random_shift(x, gen, max_shift: int = 1):
    """Translate each image by an integer offset in [-max_shift, max_shift] (background = -1 after normalisation)."""
    import torch

    n, c, h, w = x.shape
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, value=-1.0)  # -1 is pixel 0 normalised
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def train(epochs: int = 150, batch_size: int = 32, lr: float = 2e-3, weight_decay: float = 0.05,
          seed: int = 0, threads: int = 1, progress: bool = True):
    """Train the model from scratch.

    Parameters
    ----------
    epochs, batch_size, lr, weight_decay : training hyper-parameters.
    seed : int
        Seed of weight initialisation, shuffling and augmentation.
    threads : int
        ``torch.set_num_threads`` value (1 keeps the run deterministic and leaves cores free).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    model : torch.nn.Module
        The trained model in eval mode.
    history : list of dict
        Per-epoch loss and calibration-split accuracy.
    """
    import torch
    from tqdm import tqdm

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = build_model()
    loader = digits_loader("train", batch_size=batch_size, shuffle=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * len(loader)
    warm = len(loader)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator().manual_seed(seed + 1)
    history = []
    bar = tqdm(range(epochs), desc="train vitaccel-digits", disable=not progress)
    for epoch in bar:
        model.train()
        total = 0.0
        for x, y in loader:
            x = _random_shift(x, gen)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
        model.eval()
        entry = {"epoch": epoch + 1, "loss": total / len(loader.dataset)}
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            entry["calib_acc"] = evaluate_fp(model, "calib")
            bar.set_postfix(loss=f"{entry['loss']:.3f}", calib=f"{entry['calib_acc']:.3f}")
        history.append(entry)
    return model.eval(), history


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m golden.embedded.train_digits", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=CHECKPOINT,
                        help="checkpoint path (default: the committed one)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be positive")

    import torch
    from safetensors.torch import save_file

    t0 = time.time()
    model, history = train(args.epochs, args.batch_size, args.lr, args.weight_decay, args.seed, args.threads)
    seconds = time.time() - t0
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model": MODEL_NAME,
        "epochs": str(args.epochs),
        "seed": str(args.seed),
        "torch": torch.__version__,
    }
    save_file(state, str(args.output), metadata=metadata)
    result = {
        "checkpoint": str(args.output),
        "bytes": args.output.stat().st_size,
        "train_seconds": round(seconds, 1),
        "calib_acc": evaluate_fp(model, "calib"),
        "test_acc": evaluate_fp(model, "test"),
        "test_size": int(len(load_digits_split("test")[1])),
        "final_loss": history[-1]["loss"],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
