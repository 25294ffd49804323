"""The training loop: Mask2Former's recipe, checkpoints that resume exactly, and ``torchrun`` for several processes.

The recipe is the original's (``train_net.py`` and ``configs/*/Base-*.yaml`` of facebookresearch/Mask2Former):
AdamW with the backbone's learning rate scaled by ``backbone_lr_multiplier`` and no weight decay on normalization
layers, embeddings (``nn.Embedding``: query features and positions, the decoder's level embedding) and Swin's
relative position bias tables; a poly schedule with optional linear warm-up (detectron2's ``WarmupPolyLR``);
gradient clipping on the norm of the whole model; mixed precision by autocast (bf16 on CPU or CUDA; fp16 on CUDA
with a gradient scaler). The loss is the model's own (``outputs.loss`` given ``mask_labels`` and ``class_labels``).

Exact resumption: the data order comes from ``(seed, epoch)`` and the augmentation of each example from ``(seed,
epoch, index)`` (see :mod:`.data`); a checkpoint holds the step, the optimizer, scheduler and scaler states and
every process's global RNG states (Python, numpy, torch, CUDA), which the model's randomness (drop path, point
sampling) draws from. A run interrupted at step k and resumed computes the same steps k + 1, ... as one that was not.

Several processes (``torchrun``): DistributedDataParallel (gloo on CPU, nccl on CUDA), each process a slice of the
global batch, the loss normalized by the number of masks over all processes (inside the criterion); rank 0 alone
writes checkpoints, logs, evaluations and the final model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from . import distributed
from .augment import TrainAugmentation
from .config import TASKS, TrainConfig
from .data import Collate, ResumableDistributedSampler, TrainingExamples, build_datasets

logger = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
FINAL_DIR = "final"
CONFIG_NAME = "train_config.json"
NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
# Which tasks each dataset format can train: panoptic and instance targets need segments.
_TASKS_OF_DATASET = {
    "coco-panoptic": ("panoptic", "instance", "semantic"),
    "synthetic": ("panoptic", "instance", "semantic"),
    "coco-instances": ("instance", "semantic"),
    "semantic": ("semantic",),
    "cityscapes": ("semantic",),
}


# ---------------------------------------------------------------------- optimizer and schedule


def parameter_groups(
    model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_multiplier: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups as the original ``build_optimizer`` makes them.

    The backbone (modules whose name contains "backbone") gets ``lr x backbone_lr_multiplier``; parameters of norm
    layers and of ``nn.Embedding`` modules, and Swin's ``relative_position_bias_table``, get no weight decay. As in
    the original, plain ``nn.Parameter`` attributes such as the pixel decoder's ``level_embed`` keep the weight decay.
    Parameters with equal settings share a group (the original makes one group per parameter; same update).
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            group_lr = lr * backbone_lr_multiplier if "backbone" in module_name else lr
            decay = weight_decay
            if isinstance(module, (*NORM_TYPES, nn.Embedding)):
                decay = 0.0
            if "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                decay = 0.0
            groups.setdefault((group_lr, decay), []).append(parameter)
    return [{"params": params, "lr": group_lr, "weight_decay": decay} for (group_lr, decay), params in groups.items()]


class PolyWithWarmup:
    """The learning rate factor of step ``s`` (0-based): ``warmup(s) x (1 - s / max_steps) ** power``, with a linear
    warm-up from ``warmup_factor`` to 1 over ``warmup_steps`` (detectron2's ``WarmupPolyLR``)."""

    def __init__(self, max_steps: int, power: float = 0.9, warmup_steps: int = 0, warmup_factor: float = 0.001) -> None:
        self.max_steps, self.power = max_steps, power
        self.warmup_steps, self.warmup_factor = warmup_steps, warmup_factor

    def __call__(self, step: int) -> float:
        warmup = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            warmup = self.warmup_factor * (1 - alpha) + alpha
        return warmup * (1 - min(step, self.max_steps) / self.max_steps) ** self.power


# ---------------------------------------------------------------------- model


def build_model(config: TrainConfig, categories: list[dict], num_labels: int) -> tuple[nn.Module, Any]:
    """The model (fresh from a config.json, or a checkpoint with a class head for ``num_labels`` classes) and the
    image processor to save with it."""
    from ..checkpoints.hf import resolve_checkpoint
    from ..config import Mask2FormerConfig
    from ..modeling.mask2former import Mask2FormerForUniversalSegmentation
    from ..processing.image_processor import (
        PROCESSOR_CONFIG_NAME,
        Mask2FormerImageProcessor,
    )

    if config.model is None:
        raise ValueError("no model: give --model, a checkpoint folder or hub id to fine-tune or a config.json for a new model")
    id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    id2label.update({int(c["id"]): str(c["name"]) for c in categories if int(c["id"]) < num_labels})
    source = Path(config.model)
    processor_file = None
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise ValueError(f"--model {config.model!r} is a file but not a config.json; give a checkpoint folder or a config.json")
        model_config = Mask2FormerConfig.from_pretrained(source)
        model_config.id2label, model_config.num_labels = id2label, num_labels
        model = Mask2FormerForUniversalSegmentation.from_config(model_config)
    else:
        model = Mask2FormerForUniversalSegmentation.from_pretrained(config.model, id2label=id2label)
        folder = resolve_checkpoint(config.model)
        if (folder / PROCESSOR_CONFIG_NAME).is_file():
            processor_file = folder / PROCESSOR_CONFIG_NAME
    settings: dict[str, Any] = {"ignore_index": 255, "num_labels": num_labels}
    size = config.inference_size or (None if processor_file is not None else config.crop_size)
    if size is not None:
        settings["size"] = {"shortest_edge": size, "longest_edge": math.ceil(size * 1333 / 800)}
    if processor_file is not None:
        processor = Mask2FormerImageProcessor.from_pretrained(processor_file, **settings)
    else:
        processor = Mask2FormerImageProcessor(**settings)
    return model, processor


# ---------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a run did: the last step, whether it was interrupted, where things were written, the last evaluation."""

    step: int
    interrupted: bool
    output_dir: Path
    final_dir: Path | None = None
    checkpoint: Path | None = None
    evaluation: dict[str, Any] | None = None
    losses: list[float] = field(default_factory=list)


class _StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop after the current step (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: stopping after this step and saving a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave Ctrl-C and SIGTERM to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _headline(task: str, report: dict[str, Any]) -> dict[str, float]:
    if task == "panoptic":
        return {f"PQ{'' if name == 'All' else '_' + name.lower()}": 100 * report[name]["pq"] for name in ("All", "Things", "Stuff")}
    if task == "instance":
        return {key: report[key] for key in ("AP", "AP50", "AP75")}
    return {key: report[key] for key in ("mIoU", "pACC")}


class Trainer:
    """Train a Mask2Former model as a :class:`TrainConfig` says. ``Trainer(config).train()`` runs it.

    Everything that can be checked is checked in the constructor, before any step: the dataset (not empty, not
    smaller than a batch, categories within ``num_labels``), the model, and the checkpoint to resume (its format
    and its architecture).

    Args:
        config: the run's settings.
        train_dataset, val_dataset: readers to use instead of the ones the config describes (items as
            :mod:`mask2former.data.datasets` yields them; ``categories`` with ``id``, ``name``, ``isthing``).
    """

    def __init__(self, config: TrainConfig, *, train_dataset: Any = None, val_dataset: Any = None) -> None:
        config.validate()
        self.config = config
        self.context = distributed.init_distributed(config.device)
        try:
            self._setup(train_dataset, val_dataset)
        except BaseException:
            distributed.shutdown(self.context)
            raise

    def _setup(self, train_dataset: Any, val_dataset: Any) -> None:
        config, context = self.config, self.context
        if config.batch_size % context.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) is not divisible by the {context.world_size} processes"
            )
        self.local_batch_size = config.batch_size // context.world_size
        if train_dataset is None:
            tasks = _TASKS_OF_DATASET.get(config.dataset, TASKS)
            if config.task not in tasks:
                raise ValueError(f"--dataset {config.dataset} cannot train --task {config.task}; it can: {', '.join(tasks)}")
            train_dataset, built_val = build_datasets(config)
            val_dataset = built_val if val_dataset is None else val_dataset
        if len(train_dataset) == 0:
            raise ValueError("the training dataset is empty")
        if len(train_dataset) < config.batch_size:
            raise ValueError(f"the training dataset has {len(train_dataset)} images, fewer than one batch ({config.batch_size})")
        categories = list(getattr(train_dataset, "categories", []))
        num_labels = config.num_labels or len(categories)
        if not num_labels:
            raise ValueError("the dataset has no category list: give --num-labels")
        too_large = [c for c in categories if int(c["id"]) >= num_labels]
        if too_large:
            raise ValueError(
                f"the dataset has class id {too_large[0]['id']} ({too_large[0].get('name')!r}), but num_labels is "
                f"{num_labels}: class ids must be < num_labels"
            )
        self.num_labels = num_labels
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        if val_dataset is not None and categories and len(categories) != num_labels:
            logger.warning("num_labels %d differs from the %d categories: no evaluation", num_labels, len(categories))
            self.val_dataset = None

        self.output_dir = Path(config.output_dir)
        resume_path = ckpt.resolve_resume(config.resume, self.output_dir)
        state = ckpt.load_checkpoint(resume_path) if resume_path is not None else None

        _seed_everything(config.seed)
        model, self.processor = build_model(config, categories, num_labels)
        if state is not None:
            ckpt.check_architecture(state, model, repr(str(resume_path)))
            model.load_state_dict(state["model"])
        self.model = model.to(context.device).train()
        self.optimizer = torch.optim.AdamW(
            parameter_groups(
                self.model, lr=config.lr, weight_decay=config.weight_decay,
                backbone_lr_multiplier=config.backbone_lr_multiplier,
            ),
            lr=config.lr,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, PolyWithWarmup(config.max_steps, config.poly_power, config.warmup_steps)
        )
        if config.amp == "fp16" and context.device.type != "cuda":
            raise ValueError("amp fp16 needs CUDA (it uses a gradient scaler); use --amp bf16 on the CPU")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=config.amp == "fp16")
        self.step = 0
        self.resumed_from = resume_path
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            # load_state_dict also restores the schedule's settings; keep this run's (e.g. a longer --max-steps)
            schedule = PolyWithWarmup(config.max_steps, config.poly_power, config.warmup_steps)
            self.scheduler.lr_lambdas = [schedule] * len(self.optimizer.param_groups)
            for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                group["lr"] = base_lr * schedule(self.scheduler.last_epoch)
            if state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.step = int(state["step"])
            rng = state.get("rng") or []
            if len(rng) == context.world_size:
                ckpt.restore_rng_state(rng[context.rank])
            else:
                logger.warning(
                    "the checkpoint was written by %d processes, this run has %d: random states are re-seeded, so the "
                    "run continues but not bit for bit", len(rng), context.world_size,
                )
                _seed_everything(config.seed + self.step + context.rank)
            saved_data = state.get("data") or {}
            if context.is_main:
                print(f"resuming from {resume_path} at step {self.step}")
        else:  # the model's randomness (drop path, point sampling) differs between processes; rank 0 = one process
            _seed_everything(config.seed + context.rank)

        self.ddp_model: nn.Module = self.model
        if context.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[context.device.index] if context.device.type == "cuda" else None
            )
        augmentation = TrainAugmentation(
            mode=config.augmentation, crop_size=config.crop_size, scale_range=config.resolved_scale_range,
            flip_prob=0.5 if config.flip else 0.0, color_jitter=config.color_jitter, ignore_index=255,
        )
        self.examples = TrainingExamples(
            train_dataset, augmentation, task=config.task, num_labels=num_labels, seed=config.seed
        )
        self.sampler = ResumableDistributedSampler(
            self.examples, num_replicas=context.world_size, rank=context.rank, seed=config.seed
        )
        self.steps_per_epoch = self.sampler.num_samples // self.local_batch_size
        self.collate = Collate(self.processor.image_mean, self.processor.image_std)
        if state is not None:
            now = self._data_position()
            changed = [key for key in ("dataset_size", "batch_size") if key in saved_data and saved_data[key] != now[key]]
            if changed:
                logger.warning(
                    "the checkpoint was trained with %s; the data order continues from epoch %d, not exactly as before",
                    ", ".join(f"{key} {saved_data[key]} (now {now[key]})" for key in changed), now["epoch"],
                )

    # ------------------------------------------------------------------ pieces of the loop

    def _data_position(self) -> dict[str, int]:
        """Where the data order stands after ``self.step`` steps (it follows from the step, the dataset size and the
        global batch; stored to tell when a resumed run has another dataset or batch size)."""
        epoch, position = divmod(self.step, self.steps_per_epoch)
        return {"epoch": epoch, "batch_in_epoch": position, "dataset_size": len(self.examples),
                "batch_size": self.config.batch_size}

    def _batches(self):
        """Batches from the current step on, epoch after epoch."""
        epoch, position = divmod(self.step, self.steps_per_epoch)
        while True:
            self.sampler.set_position(epoch, position * self.local_batch_size)
            loader = DataLoader(
                self.examples,
                batch_size=self.local_batch_size,
                sampler=self.sampler,
                drop_last=True,
                num_workers=self.config.num_workers,
                collate_fn=self.collate,
                worker_init_fn=_ignore_stop_signals if self.config.num_workers else None,
                generator=torch.Generator().manual_seed(self.config.seed),  # keeps the global RNG untouched
                pin_memory=self.context.device.type == "cuda",
            )
            yield from loader
            epoch, position = epoch + 1, 0

    def _train_step(self, batch: dict[str, Any]) -> tuple[float, dict[str, float], float]:
        device = self.context.device
        pixel_values = batch["pixel_values"].to(device, non_blocking=True)
        pixel_mask = batch["pixel_mask"].to(device, non_blocking=True)
        mask_labels = [masks.to(device, non_blocking=True) for masks in batch["mask_labels"]]
        class_labels = [classes.to(device, non_blocking=True) for classes in batch["class_labels"]]
        autocast = (
            torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            outputs = self.ddp_model(
                pixel_values=pixel_values, pixel_mask=pixel_mask, mask_labels=mask_labels, class_labels=class_labels
            )
        loss = outputs.loss
        terms = {name: float(value.detach()) for name, value in (getattr(outputs, "loss_dict", None) or {}).items()}
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss is {loss_value} at step {self.step + 1}; terms: {terms}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.clip_grad_norm if self.config.clip_grad_norm > 0 else math.inf  # 0: measure, no clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss_value, terms, grad_norm

    def _save_checkpoint(self) -> Path | None:
        """Every process hands its RNG states to rank 0, which writes the checkpoint."""
        rng_states = distributed.gather_objects(ckpt.capture_rng_state(), self.context)
        path = None
        if self.context.is_main:
            state = ckpt.training_state(
                step=self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                scaler=self.scaler, rng_states=rng_states, config=self.config.to_dict(), data=self._data_position(),
            )
            path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.output_dir, self.step), state)
            ckpt.prune_checkpoints(self.output_dir, self.config.keep_checkpoints)
        distributed.barrier(self.context)
        return path

    def evaluate(self) -> dict[str, Any] | None:
        """Score the model on the validation set (rank 0; the others wait). Returns the full report."""
        report = None
        if self.val_dataset is not None and self.context.is_main:
            from ..evaluation.evaluate import evaluate
            from ..segmenter import Segmenter

            rng = torch.get_rng_state()
            try:
                segmenter = Segmenter(self.model, self.processor)
                report = evaluate(segmenter, self.val_dataset, self.config.task, limit=self.config.eval_limit, progress=False)
            finally:
                self.model.train()
                torch.set_rng_state(rng)
            report["step"] = self.step
            with open(self.output_dir / f"eval-{self.step:08d}.json", "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=1, default=float)
            self._log({"step": self.step, "eval": _headline(self.config.task, report)})
        distributed.barrier(self.context)
        return report

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.output_dir / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _prepare_output(self) -> None:
        if not self.context.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / CONFIG_NAME, "w", encoding="utf-8") as handle:
            json.dump(self.config.to_dict(), handle, indent=2)
        log = self.output_dir / LOG_NAME
        if log.is_file():  # drop what a previous run logged after the step we continue from
            kept = [line for line in log.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= self.step]
            log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def _save_final(self) -> Path:
        final = self.output_dir / FINAL_DIR
        self.model.save_pretrained(final)
        self.processor.save_pretrained(final)
        return final

    # ------------------------------------------------------------------ the loop

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Run from the current step to ``max_steps``.

        Args:
            stop_at_step: stop after this step as SIGINT/SIGTERM would stop the run: a checkpoint is saved, no
                final model, ``interrupted`` is True (the schedule still runs to ``max_steps``).
        """
        config, context = self.config, self.context
        try:
            self._prepare_output()
            distributed.barrier(context)
            result = TrainResult(step=self.step, interrupted=False, output_dir=self.output_dir)
            bar = None
            if context.is_main and config.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=config.max_steps, initial=self.step, unit="step", desc="train", dynamic_ncols=True)
            started = last_log = time.perf_counter()
            last_logged_step = self.step
            batches = self._batches()
            with _StopRequest() as stop:
                while self.step < config.max_steps:
                    batch = next(batches)
                    lr = self.config.lr * self.scheduler.lr_lambdas[0](self.step)  # the base (non-backbone) lr
                    loss, terms, grad_norm = self._train_step(batch)
                    self.step += 1
                    result.losses.append(loss)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                    if self.step % config.log_every == 0 or self.step == config.max_steps:
                        averaged = distributed.all_reduce_mean({"loss": loss, **terms}, context)
                        now = time.perf_counter()
                        if context.is_main:
                            self._log({
                                "step": self.step, **averaged, "lr": lr, "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                                "time": now - started, "step_time": (now - last_log) / (self.step - last_logged_step),
                            })
                        last_log, last_logged_step = now, self.step
                    stopping = distributed.any_process(stop.requested, context) or self.step == stop_at_step
                    if stopping or (config.save_every and self.step % config.save_every == 0 and self.step < config.max_steps):
                        result.checkpoint = self._save_checkpoint()
                    if stopping:
                        result.interrupted = True
                        if context.is_main:
                            print(f"\nstopped at step {self.step}; checkpoint {result.checkpoint}; continue with --resume auto")
                        break
                    if config.eval_every and self.step % config.eval_every == 0 and self.step < config.max_steps:
                        report = self.evaluate()
                        if report is not None:
                            result.evaluation = report
            if bar is not None:
                bar.close()
            result.step = self.step
            if not result.interrupted:
                result.checkpoint = self._save_checkpoint()
                report = self.evaluate()
                if report is not None:
                    result.evaluation = report
                if context.is_main:
                    result.final_dir = self._save_final()
                distributed.barrier(context)
            return result
        finally:
            distributed.shutdown(context)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: TrainConfig, *, stop_at_step: int | None = None, **kwargs: Any) -> TrainResult:
    """Build a :class:`Trainer` (``kwargs``: its datasets) and run it."""
    return Trainer(config, **kwargs).train(stop_at_step=stop_at_step)
