"""Evaluation overhead and memory: how much of ``evaluate()`` is the model's forward, and whether memory grows.

Writes ``--images`` synthetic 256x256 scenes (``mask2former.data.synthetic``), builds a randomly initialized model
and runs ``evaluate()`` for each task (PQ on the COCO panoptic reader, mask AP on the COCO instance reader, mIoU on
the ADE20K-style reader). The model's ``forward`` and ``Segmenter.segment`` are wrapped with timers, so the report
splits the total into: forward, pre/post-processing (inside ``segment``, outside ``forward``), reading the dataset,
and the rest (metric accumulation, building the detections). The overhead is everything but the forward.

Memory: the resident set size (``/proc/self/statm``) and its peak (``getrusage``) are sampled when the reader is
asked for image 1, 50, 100 and the last one. RSS also moves with the allocator's retention of freed PyTorch buffers,
so ``--tracemalloc`` adds what Python and numpy hold (``tracemalloc`` sees numpy's buffers, not PyTorch's): the
memory the evaluation code itself keeps. After warm-up only mask AP may grow (it keeps the RLE detections).

Models (``--model``):
  swin-t  (default) Swin-T backbone (embed 96, depths 2-2-6-2), Mask2Former's pixel decoder (6 layers) and decoder
          (9 layers + the initial prediction, 100 queries), 8 classes; inputs resized to 384x384 as in the released
          checkpoints. The class head is scaled up so that queries are confident, as a trained model's are (a random
          head gives every query a score near 1/9, and panoptic post-processing would then keep nothing).
  tiny    the test suite's tiny config (embed 32, depths 1-1-1-1, 10 queries) at 384x384: a forward that is far too
          fast to be realistic, to show the per-image overhead in milliseconds.

    .venv/bin/python benchmarks/evaluate.py                       # 200 images, Swin-T, all three tasks
    .venv/bin/python benchmarks/evaluate.py --images 20 --model tiny --tasks semantic
    .venv/bin/python benchmarks/evaluate.py --model tiny --tracemalloc     # memory held by the evaluation code
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import tracemalloc

TINY = dict(
    backbone=dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=7),
    decoder=dict(feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
                 encoder_layers=2, decoder_layers=4, num_attention_heads=4, num_queries=10),
)
SWIN_T = dict(
    backbone=dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3),
    decoder=dict(num_queries=100, decoder_layers=10),
)


def build_segmenter(name: str, id2label: dict[int, str], input_size: int):
    import torch

    from mask2former import Mask2FormerForUniversalSegmentation
    from mask2former.config import Mask2FormerConfig, SwinConfig
    from mask2former.processing import Mask2FormerImageProcessor
    from mask2former.segmenter import Segmenter

    shape = {"swin-t": SWIN_T, "tiny": TINY}[name]
    torch.manual_seed(0)
    config = Mask2FormerConfig(backbone_config=SwinConfig(**shape["backbone"]), id2label=id2label, **shape["decoder"])
    model = Mask2FormerForUniversalSegmentation.from_config(config).eval()
    with torch.no_grad():  # confident queries, as a trained model has (see the module docstring)
        model.class_head.weight.mul_(20.0)
    processor = Mask2FormerImageProcessor(size={"height": input_size, "width": input_size})
    return Segmenter(model, processor)


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class SampledDataset:
    """A reader wrapper that records memory when given image indices are read."""

    def __init__(self, dataset, marks):
        self.dataset, self.marks, self.samples = dataset, set(marks), {}
        self.categories = dataset.categories
        self.to_contiguous = getattr(dataset, "to_contiguous", None)

    def __len__(self):
        return len(self.dataset)

    def describe(self, index):
        return self.dataset.describe(index)

    def __getitem__(self, index):
        if index in self.marks:
            traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else float("nan")
            self.samples[index + 1] = (resident_mib(), peak_mib(), traced)
        return self.dataset[index]


class Timer:
    """Wraps a callable attribute of an object and adds up the seconds spent in it."""

    def __init__(self, owner, name):
        self.seconds, self.calls = 0.0, 0
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="synthetic image side (default 256)")
    parser.add_argument("--input-size", type=int, default=384, help="model input side (default 384)")
    parser.add_argument("--model", choices=["swin-t", "tiny"], default="swin-t")
    parser.add_argument("--tasks", nargs="+", default=["panoptic", "instance", "semantic"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python/numpy memory (slows the overhead)")
    args = parser.parse_args()

    import torch

    from mask2former.data.datasets import COCOInstanceDataset, COCOPanopticDataset, SemanticFolderDataset
    from mask2former.data.synthetic import CATEGORIES, write_synthetic_dataset
    from mask2former.evaluation.evaluate import evaluate

    torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="evaluate-benchmark-")
    start = time.perf_counter()
    write_synthetic_dataset(root, args.images, seed=0, height=args.size, width=args.size)
    print(f"{args.images} synthetic {args.size}x{args.size} images written in {time.perf_counter() - start:.1f} s ({root})")
    segmenter = build_segmenter(args.model, {i: c["name"] for i, c in enumerate(CATEGORIES)}, args.input_size)
    parameters = sum(p.numel() for p in segmenter.model.parameters()) / 1e6
    print(f"model: {args.model} ({parameters:.1f} M parameters), input {args.input_size}x{args.input_size}, "
          f"batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}")
    segmenter.segment(segmenter_warmup_image(args.size), "semantic")  # first-call allocations out of the figures

    forward = Timer(segmenter.model, "forward")
    segment = Timer(segmenter, "segment")
    marks = sorted({0, 49, 99, args.images - 1} & set(range(args.images)))
    rows = []
    for task in args.tasks:
        if task == "panoptic":
            dataset = COCOPanopticDataset(f"{root}/panoptic.json", f"{root}/images")
        elif task == "instance":
            dataset = COCOInstanceDataset(f"{root}/instances.json", f"{root}/images")
        else:
            dataset = SemanticFolderDataset(f"{root}/images", f"{root}/semantic", categories=f"{root}/categories.json")
        sampled = SampledDataset(dataset, marks)
        forward.seconds = segment.seconds = 0.0
        if args.tracemalloc:
            tracemalloc.start()
        report = evaluate(segmenter, sampled, task, batch_size=args.batch_size, progress=False)
        tracemalloc.stop()
        seconds = report["seconds"]
        total, reading = seconds["total"], seconds["reading"]
        processing = segment.seconds - forward.seconds
        rest = total - segment.seconds - reading
        overhead = total - forward.seconds
        if task == "panoptic":
            value = ("PQ", 100 * report["All"]["pq"])
        else:
            value = ("AP", report["AP"]) if task == "instance" else ("mIoU", report["mIoU"])
        rows.append((task, total, forward.seconds, processing, reading, rest, overhead, value, sampled.samples))

    per_image = 1000 / args.images
    print()
    print("| task | total | forward | pre/post-processing | reading | metric + rest | overhead (not forward) | score |")
    print("|---|---|---|---|---|---|---|---|")
    for task, total, fwd, processing, reading, rest, overhead, (name, value), _ in rows:
        print(f"| {task} | {total:.1f} s | {fwd:.1f} s | {processing:.2f} s ({processing * per_image:.1f} ms/img) | "
              f"{reading:.2f} s ({reading * per_image:.1f} ms/img) | {rest:.2f} s ({rest * per_image:.1f} ms/img) | "
              f"**{100 * overhead / total:.1f}%** | {name} {value:.1f} |")
    print()
    labels = [str(mark + 1) for mark in marks]
    print("| task | " + " | ".join(f"RSS at image {label}" for label in labels) + " | growth after image 50 | peak RSS |")
    print("|---|" + "---|" * (len(labels) + 2))
    for task, *_, samples in rows:
        print(memory_row(task, [samples[mark + 1][0] for mark in marks], "MiB") + f" {samples[marks[-1] + 1][1]:.0f} MiB |")
    if args.tracemalloc:
        print()
        print("| task | " + " | ".join(f"traced at image {label}" for label in labels) + " | growth after image 50 |")
        print("|---|" + "---|" * (len(labels) + 1))
        for task, *_, samples in rows:
            print(memory_row(task, [samples[mark + 1][2] for mark in marks], "MiB"))


def memory_row(task: str, values: list[float], unit: str) -> str:
    baseline = values[1] if len(values) > 2 else values[0]  # image 50: after warm-up
    cells = " | ".join(f"{value:.1f} {unit}" for value in values)
    return f"| {task} | {cells} | {values[-1] - baseline:+.1f} {unit} |"


def segmenter_warmup_image(size: int):
    import numpy as np

    return np.zeros((size, size, 3), np.uint8)


if __name__ == "__main__":
    main()
