"""Preprocessing speed: our image processor against ``transformers``' on the same inputs, in the same process.

A 480x640 uint8 RGB image (a numpy array, as decoded images usually arrive), resized as the released checkpoints do
(384x384) and as detectron2 does (shortest edge 800, longest 1333), in batches of 1 and 8; rescale, normalize and pad
included, torch tensors out. Median of several runs after warm-up, the two implementations alternating so that both
see the same machine state; torch uses 2 threads.

``transformers`` picks its torchvision backend when torchvision is installed and its PIL backend otherwise; the
table names the class it gave. As in ``benchmarks/forward.py``, the comparison runs twice by default, in child
processes: with glibc's default allocator and with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736`` (fewer page faults on fresh buffers).

    python benchmarks/preprocess.py                   # both allocator settings
    python benchmarks/preprocess.py --allocator current --runs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from allocator import add_allocator_argument, allocator_label, rerun_under_both_allocators
from machine import CpuSteal

SETTINGS = {
    "384x384 (released)": {"height": 384, "width": 384},
    "800/1333 (detectron2)": {"shortest_edge": 800, "longest_edge": 1333},
}


def time_once(processor, images) -> float:
    start = time.perf_counter()
    processor(images, return_tensors="pt")
    return time.perf_counter() - start


def measure(runs: int, threads: int, batch_sizes: list[int], label: str) -> None:
    import numpy as np
    import torch
    import transformers

    from mask2former.processing import Mask2FormerImageProcessor

    torch.set_num_threads(threads)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    reference_name = None
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nallocator: {label}; torch {torch.__version__}, {threads} threads, median of {runs} runs after warm-up")
    print(f"load average before: {load} (other work on the machine slows both columns)")
    rows = []
    steal = CpuSteal()
    for setting, size in SETTINGS.items():
        ours = Mask2FormerImageProcessor(size=size)
        theirs = transformers.Mask2FormerImageProcessor(size=size)
        reference_name = type(theirs).__name__
        for batch_size in batch_sizes:
            images = [image.copy() for _ in range(batch_size)]
            for _ in range(2):
                time_once(ours, images)
                time_once(theirs, images)
            ours_times, their_times = [], []
            for _ in range(runs):
                their_times.append(time_once(theirs, images))
                ours_times.append(time_once(ours, images))
            rows.append((setting, batch_size, statistics.median(their_times), statistics.median(ours_times)))
    print(f"480x640 uint8 RGB input; transformers class: {reference_name}")
    print(f"{'resize':>22} | {'batch':>5} | {'transformers (ms)':>17} | {'mask2former (ms)':>16} | {'speed-up':>8}")
    print("-" * 82)
    for setting, batch_size, reference, mine in rows:
        print(
            f"{setting:>22} | {batch_size:>5} | {reference * 1e3:>17.2f} | {mine * 1e3:>16.2f} | "
            f"{reference / mine:>7.1f}x",
            flush=True,
        )
    print(steal.report(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per implementation and case")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="images per call")
    add_allocator_argument(parser)
    args = parser.parse_args()
    if args.allocator == "current":
        label = allocator_label()
        measure(args.runs, args.threads, args.batch_sizes, label)
        return
    rerun_under_both_allocators()


if __name__ == "__main__":
    main()
