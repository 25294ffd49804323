"""Training-step speed: ours against ``transformers`` on the same Swin-T weights and targets, in the same process.

One step = forward with ``mask_labels``/``class_labels`` (the Hungarian matching and the point-sampled losses on every
auxiliary prediction included), ``loss.backward()`` and zeroing the gradients. A random ``transformers`` Mask2Former
shaped like ``facebook/mask2former-swin-tiny-coco-instance`` (80 classes, 100 queries) is saved and loaded into ours;
both get the same batch: 2 images of 384x384 with 6 random-blob targets each. Train mode, fp32. The median of several
steps after a warm-up step, the two implementations alternating so that both see the same machine state.

    python benchmarks/train_step.py                        # both allocator settings
    python benchmarks/train_step.py --allocator current --runs 3 --size 384
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from allocator import add_allocator_argument, allocator_label, rerun_under_both_allocators
from forward import build_models
from machine import CpuSteal


def make_batch(size: int, batch: int = 2, targets: int = 6, num_labels: int = 80):
    """(B, 3, S, S) images and per image ``targets`` blob masks (N, S, S) with random classes."""
    import torch

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float()
    mask_labels, class_labels = [], []
    for _ in range(batch):
        centers = torch.rand(targets, 2, generator=generator) * size
        radii = size * (0.05 + 0.2 * torch.rand(targets, generator=generator))
        masks = ((grid[None] - centers[:, None, None]).norm(dim=-1) < radii[:, None, None]).float()
        mask_labels.append(masks)
        class_labels.append(torch.randint(0, num_labels, (targets,), generator=generator))
    return pixel_values, mask_labels, class_labels


def step_once(model, pixel_values, mask_labels, class_labels) -> float:
    start = time.perf_counter()
    outputs = model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    outputs.loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(size: int, runs: int, threads: int, label: str) -> None:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as directory:
        ours, theirs = build_models(directory)
    ours.train()
    theirs.train()
    batch = make_batch(size)
    print(f"\nallocator: {label}; torch {torch.__version__}, {threads} threads, median of {runs} steps after warm-up")
    print(f"{'input':>14} | {'transformers (s)':>16} | {'mask2former (s)':>15} | {'speed-up':>8}")
    print("-" * 64)
    step_once(ours, *batch)
    step_once(theirs, *batch)
    steal = CpuSteal()
    ours_times, their_times = [], []
    for _ in range(runs):
        their_times.append(step_once(theirs, *batch))
        ours_times.append(step_once(ours, *batch))
    mine, reference = statistics.median(ours_times), statistics.median(their_times)
    print(f"{'2x' + str(size) + 'x' + str(size):>14} | {reference:>16.2f} | {mine:>15.2f} | {reference / mine:>7.2f}x")
    print(steal.report(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=384, help="square input size")
    parser.add_argument("--runs", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    add_allocator_argument(parser)
    args = parser.parse_args()
    if args.allocator == "current":
        measure(args.size, args.runs, args.threads, allocator_label())
        return
    rerun_under_both_allocators()


if __name__ == "__main__":
    main()
