"""Post-processing speed: ours against ``transformers``' ``Mask2FormerImageProcessor`` on the same outputs.

Outputs shaped like a Swin-T Mask2Former at a 384x384 input: 100 queries, 80 classes (133 for panoptic), 96x96
mask logits, one image, resized to 480x640. Timed in one process, the two implementations alternating, median of
several runs after warm-up, torch with 2 threads. Ours is also timed with ``mask_size=None`` (masks resized straight
to 480x640, as the original code does; nothing to compare with in ``transformers``).

glibc's default allocator can make CPU workloads spend much of their time in page faults, so by default the comparison
runs twice, in child processes: with the default allocator and with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736``.

Two kinds of outputs:
- ``model-like`` (the target case): what a trained model emits. The image is a partition into 15 regions, each
  predicted by a confident query (class probability ~0.99) whose mask logits grow with the distance inside its
  region (about 1.5 per mask pixel, sharp at the stride-4 boundaries); 10 weaker duplicate queries on shifted copies
  of some regions; the remaining 75 queries are confidently "no object" with blob-shaped masks.
- ``noise``: i.i.d. normal logits (class x3, mask x3): about half the queries pass the thresholds and no mask is
  smooth. A worst case, for our bound-based shortcuts especially.

    python benchmarks/postprocess.py                                   # both allocators, both kinds of outputs
    python benchmarks/postprocess.py --allocator current --inputs model-like --runs 25
    python benchmarks/postprocess.py --inputs model-like --regions 45                  # an image with more segments
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from allocator import add_allocator_argument, allocator_label, rerun_under_both_allocators
from machine import CpuSteal


def model_like_outputs(num_classes: int, *, queries: int = 100, size: int = 96, regions: int = 15, seed: int = 0):
    """(1, Q, K+1) class logits and (1, Q, size, size) mask logits resembling a trained model's."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float()  # (s, s, 2)

    def region_logits(centers: torch.Tensor) -> torch.Tensor:
        # Voronoi regions with wobbly borders: query k is positive where its center is the nearest one.
        distance = (grid[None] - centers[:, None, None]).norm(dim=-1)  # (R, s, s)
        wobble = torch.nn.functional.interpolate(
            torch.randn(1, len(centers), 6, 6, generator=generator) * 4, size=(size, size), mode="bicubic"
        )[0]
        distance = distance + wobble
        nearest_other = torch.stack(
            [torch.cat([distance[:k], distance[k + 1 :]]).amin(0) for k in range(len(centers))]
        )
        return 1.5 * (nearest_other - distance) / 2

    centers = torch.rand(regions, 2, generator=generator) * size
    objects = region_logits(centers)  # (R, s, s)
    duplicates = region_logits(centers + torch.randn(regions, 2, generator=generator) * 3)[:10]
    blob_centers = torch.rand(queries - regions - 10, 2, generator=generator) * size
    radii = 4 + torch.rand(queries - regions - 10, generator=generator) * 20
    blobs = 1.5 * (radii[:, None, None] - (grid[None] - blob_centers[:, None, None]).norm(dim=-1))
    masks = torch.cat([objects, duplicates, blobs])[None]  # (1, Q, s, s)

    logits = torch.randn(1, queries, num_classes + 1, generator=generator)
    object_classes = torch.randperm(num_classes, generator=generator)[:regions]
    logits[0, torch.arange(regions), object_classes] += 10
    logits[0, regions + torch.arange(10), object_classes[:10]] += 4
    logits[0, regions + 10 :, -1] += 8
    return logits, masks


def noise_outputs(num_classes: int, *, queries: int = 100, size: int = 96, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, queries, num_classes + 1, generator=generator) * 3
    masks = torch.randn(1, queries, size, size, generator=generator) * 3
    return logits, masks


class Outputs:
    def __init__(self, class_queries_logits, masks_queries_logits):
        self.class_queries_logits = class_queries_logits
        self.masks_queries_logits = masks_queries_logits


def time_once(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(kinds: list[str], runs: int, threads: int, label: str, regions: int = 15) -> None:
    import transformers
    from transformers.utils import logging as transformers_logging

    from mask2former.processing import postprocess

    transformers_logging.set_verbosity_error()  # the torchvision fallback notice
    torch.set_num_threads(threads)
    processor = transformers.Mask2FormerImageProcessor()
    target = [(480, 640)]
    tasks = {
        "semantic": (80, "post_process_semantic_segmentation", {}),
        "instance": (80, "post_process_instance_segmentation", {}),
        "panoptic": (133, "post_process_panoptic_segmentation", {"label_ids_to_fuse": set()}),
    }
    print(
        f"\nallocator: {label}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{threads} threads, median of {runs} runs after warm-up; 100 queries, 96x96 masks -> 480x640, "
        f"{regions} regions in model-like outputs",
        flush=True,
    )
    steal = CpuSteal()
    for kind in kinds:
        print(f"\n{kind} outputs")
        print(f"{'task':>9} | {'transformers (ms)':>17} | {'ours (ms)':>9} | {'speed-up':>8} | "
              f"{'ours, mask_size=None (ms)':>25}")
        print("-" * 82)
        for task, (num_classes, name, extra) in tasks.items():
            if kind == "model-like":
                outputs = Outputs(*model_like_outputs(num_classes, regions=regions))
            else:
                outputs = Outputs(*noise_outputs(num_classes))
            theirs = functools.partial(getattr(processor, name), outputs, target_sizes=target, **extra)
            ours = functools.partial(getattr(postprocess, name), outputs, target_sizes=target, **extra)
            full = functools.partial(getattr(postprocess, name), outputs, target_sizes=target, mask_size=None, **extra)
            for function in (theirs, ours, full):  # warm-up
                function()
            their_times, our_times, full_times = [], [], []
            for _ in range(runs):  # alternate, so that both see the same machine state
                their_times.append(time_once(theirs))
                our_times.append(time_once(ours))
                full_times.append(time_once(full))
            their_ms, our_ms, full_ms = (1000 * statistics.median(t) for t in (their_times, our_times, full_times))
            print(f"{task:>9} | {their_ms:17.1f} | {our_ms:9.1f} | {their_ms / our_ms:7.1f}x | {full_ms:25.1f}",
                  flush=True)
    print(steal.report(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per implementation and task")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--inputs", choices=["model-like", "noise", "both"], default="both")
    parser.add_argument(
        "--regions", type=int, default=15, help="objects (segments) in the model-like outputs, at least 10"
    )
    add_allocator_argument(parser)
    args = parser.parse_args()
    if not 10 <= args.regions <= 90:
        parser.error(f"--regions must be between 10 and 90 (100 queries, 10 of them duplicates), got {args.regions}")
    kinds = ["model-like", "noise"] if args.inputs == "both" else [args.inputs]
    if args.allocator == "current":
        label = allocator_label()
        measure(kinds, args.runs, args.threads, label, args.regions)
        return
    rerun_under_both_allocators()


if __name__ == "__main__":
    main()
