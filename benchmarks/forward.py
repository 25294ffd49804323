"""Forward-pass speed: ours against ``transformers`` on the same Swin-T weights, in the same process.

Builds a random ``transformers`` Mask2Former shaped like ``facebook/mask2former-swin-tiny-coco-instance`` (80
classes, 100 queries), saves it, loads it into ours, and times one image at each size: the median of several runs
after warm-up, the two implementations alternating so that both see the same machine state.

glibc's default allocator can make large CPU workloads spend much of their time in page faults, so by default the
comparison runs twice, in child processes: with the default allocator and with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736``.

    python benchmarks/forward.py                      # both allocator settings, 512x512 and 800x1216
    python benchmarks/forward.py --allocator current --sizes 512x512 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from allocator import add_allocator_argument, allocator_label, rerun_under_both_allocators


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def build_models(directory: str):
    import torch
    import transformers

    from mask2former import Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    backbone = transformers.SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(backbone_config=backbone, num_labels=80, num_queries=100)
    theirs = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    theirs.save_pretrained(directory)
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory).eval()
    return ours, theirs


def time_once(model, pixel_values) -> float:
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        model(pixel_values)
        return time.perf_counter() - start


def measure(sizes: list[tuple[int, int]], runs: int, threads: int, label: str) -> None:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as directory:
        ours, theirs = build_models(directory)
    print(f"\nallocator: {label}; torch {torch.__version__}, {threads} threads, median of {runs} runs after warm-up")
    print(f"{'input':>10} | {'transformers (s)':>16} | {'mask2former (s)':>15} | {'speed-up':>8}")
    print("-" * 60)
    for height, width in sizes:
        pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        time_once(ours, pixel_values)
        time_once(theirs, pixel_values)
        ours_times, their_times = [], []
        for _ in range(runs):
            their_times.append(time_once(theirs, pixel_values))
            ours_times.append(time_once(ours, pixel_values))
        mine, reference = statistics.median(ours_times), statistics.median(their_times)
        print(f"{height:>4}x{width:<5} | {reference:>16.3f} | {mine:>15.3f} | {reference / mine:>7.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512x512", "800x1216"], help="HxW input sizes")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per implementation and size")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    add_allocator_argument(parser)
    args = parser.parse_args()
    if args.allocator == "current":
        label = allocator_label()
        measure([parse_size(s) for s in args.sizes], args.runs, args.threads, label)
        return
    rerun_under_both_allocators()


if __name__ == "__main__":
    main()
