"""One engine for every task: the Engine owns device, precision, seeding, loaders and distribution (torchrun);
``train_one_epoch``, ``evaluate`` and ``fit`` are plain functions. Nothing here branches on the task: a task is
its config, and the loop never branches on distribution: Engine methods hide it (docs/distributed.md).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from .config import Config, save_config
from .data import DataError, load_train, split_images
from .data.crop import build_train_image_loader, fill_crop_caches
from .data.dataset import ImageDataset, build_dataset, seed_worker
from .data.samplers import DistributedWeightedSampler, ShardedSampler
from .losses import build_loss
from .metrics import accuracy, confusion, macro_f1
from .models import build_model, model_mean_std, resolve_pretrained
from .progress import progress
from .tasks import get_task
from .transforms import build_mixup
from .years import head_outputs


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Engine:
    """Device, mixed precision (bf16, else fp16 with a grad scaler, on CUDA only), channels-last, loaders, and
    the process group when launched by torchrun (WORLD_SIZE > 1): one process per GPU with NCCL, gloo on CPUs."""

    device: torch.device = field(default_factory=pick_device)
    amp: bool = True
    channels_last: bool = True
    workers: int = 0

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.rank, self.world_size, self._owns_group = self._join_process_group()
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if self.amp and on_cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _join_process_group(self) -> tuple[int, int, bool]:
        """(rank, world_size, whether this engine created the group) from torchrun's RANK, WORLD_SIZE and
        LOCAL_RANK; a plain ``python -m maskcls`` is rank 0 of 1 and starts nothing."""
        if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not dist.is_initialized():
            return 0, 1, False
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        owns_group = not dist.is_initialized()
        if owns_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if dist.get_rank() == 0:
                print(f"distributed: {dist.get_world_size()} processes, {dist.get_backend()} on {self.device.type}",
                      flush=True)
        return dist.get_rank(), dist.get_world_size(), owns_group

    def close(self) -> None:
        """Wait until every rank is done (rank 0 may still be saving), then leave the process group."""
        if self._owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    @classmethod
    def from_config(cls, config: Config, device: str | None = None, workers: int | None = None) -> "Engine":
        """The config's engine; ``device`` and ``workers`` override the config's (inference picks its own)."""
        return cls(pick_device(device or config.device), config.amp, config.channels_last,
                   config.workers if workers is None else workers)

    @property
    def is_main(self) -> bool:
        """True in the one process that writes files, logs and progress bars."""
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def rank_seed(self, seed: int) -> int:
        """``seed`` for this rank's own random streams (augmentations, dropout, loader workers), offset by rank as
        timm and nanoGPT do, so that two ranks do not draw the same flips for different images."""
        return seed + 1000 * self.rank  # distinct from every other rank's for runs under 1000 epochs

    def setup_model(self, model: nn.Module) -> nn.Module:
        """On the device, channels-last, and wrapped in DistributedDataParallel when distributed."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=memory_format)
        if self.world_size > 1:
            model = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        return model

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The bare model (no DDP: evaluation shares are uneven) in eval mode, with rank 0's buffers. DDP copies
        rank 0's buffers to the others before each training forward, so every rank's last step leaves it its own
        BatchNorm statistics; the checkpoint holds rank 0's, and so must the evaluation."""
        model = _unwrap(model)
        if self.world_size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        return model.eval()

    def to_device(self, images: torch.Tensor, targets: torch.Tensor):
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return (images.to(self.device, non_blocking=True, memory_format=memory_format),
                targets.to(self.device, non_blocking=True))

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward, optimizer step and scaler update; the loop never branches on precision."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def loader(self, dataset, batch_size: int, train: bool, seed: int = 0, sample_weights=None) -> DataLoader:
        """Shuffled (or weighted-sampled) and drop-last for training, in order for evaluation. Distributed, each
        rank loads its own share of ``batch_size``-image batches (see maskcls.data.samplers)."""
        generator = torch.Generator().manual_seed(self.rank_seed(seed))
        sampler = self._sampler(dataset, train, seed, sample_weights, generator)
        share = len(sampler) if sampler is not None else len(dataset)  # the same on every rank in training
        return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                          drop_last=train and share > batch_size, num_workers=self.workers,
                          worker_init_fn=seed_worker, generator=generator,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _sampler(self, dataset, train: bool, seed: int, sample_weights, generator):
        # fit builds a new loader each epoch with seed = config.seed + epoch, which is what set_epoch would add
        weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.double)
        if self.world_size == 1:
            if train and weights is not None:
                return WeightedRandomSampler(weights, len(dataset), replacement=True, generator=generator)
            return None
        if not train:
            return ShardedSampler(len(dataset), self.rank, self.world_size)
        if weights is not None:
            return DistributedWeightedSampler(weights, self.rank, self.world_size, seed)
        return DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed)

    def gather(self, loader: DataLoader, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """CPU ``tensors`` computed over this rank's share of ``loader``, put together from every rank in dataset
        order (a ShardedSampler has no padding, so each image appears once). Every rank gets the whole."""
        if not isinstance(loader.sampler, ShardedSampler):  # one process, or a loader every rank ran in full
            return tensors
        shares = [None] * self.world_size
        dist.all_gather_object(shares, (list(loader.sampler), tensors))
        order = torch.as_tensor([i for indices, _ in shares for i in indices]).argsort()
        return tuple(torch.cat([share[k] for _, share in shares])[order] for k in range(len(tensors)))

    def all_sum(self, *numbers: float) -> list[float]:
        """Each number summed over the ranks (the numbers as given in one process)."""
        if self.world_size == 1:
            return list(numbers)
        total = torch.tensor(numbers, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank: rank 0 decides, e.g. the run folder."""
        if self.world_size == 1:
            return value
        values = [value]
        dist.broadcast_object_list(values, src=0)
        return values[0]


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, engine: Engine, desc: str = "train",
                    mix=None) -> dict:
    """One pass over ``loader``; ``mix`` (transforms.build_mixup), when given, mixes each batch and its targets."""
    model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = progress(loader, desc=desc, disable=None if engine.is_main else True)
    for images, targets in bar:
        images, targets = engine.to_device(images, targets)
        if mix is not None:
            images, targets = mix(images, targets)
        with engine.autocast():
            loss = loss_fn(model(images), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at image {seen}: lower lr or check the data")
        engine.step(loss, optimizer)
        scheduler.step()
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.1f}")
    seconds = time.perf_counter() - start
    total_loss, seen = engine.all_sum(total_loss, seen)  # over every rank's share
    return {"train_loss": total_loss / max(seen, 1), "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}


@torch.no_grad()
def predict_logits(model, loader, engine: Engine, desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) for the whole loader, on the CPU, in dataset order. Distributed, each rank predicts
    its share of an ``engine.loader`` and every rank gets the whole set back."""
    model = engine.eval_model(model)
    logits, targets = [], []
    for images, target in progress(loader, desc=desc, disable=None if engine.is_main else True):
        images, _ = engine.to_device(images, target)
        with engine.autocast():
            logits.append(model(images).float().cpu())
        targets.append(target)
    return engine.gather(loader, torch.cat(logits), torch.cat(targets))


def evaluate(model, loader, loss_fn, engine: Engine, num_classes: int) -> dict:
    """Loss, macro F1 and accuracy over the whole set (never averaged per batch), plus the predictions."""
    logits, targets = predict_logits(model, loader, engine, desc="val")
    preds = logits.argmax(1).numpy()
    return {"val_loss": float(loss_fn.cpu()(logits, targets)), "val_f1": macro_f1(targets.numpy(), preds, num_classes),
            "val_acc": accuracy(targets.numpy(), preds), "targets": targets.numpy(), "preds": preds}


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=True)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, config: Config) -> float:
    """Multiplier of the base lr after ``step`` optimizer steps: linear warm-up, then cosine or step decay."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return min(1.0, (step + 1) / warmup_steps)  # a warm-up shorter than one step never overshoots the lr
    if config.scheduler == "step":
        return config.step_gamma ** ((step // steps_per_epoch) // config.step_epochs)
    total_steps = config.epochs * steps_per_epoch
    done = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def build_scheduler(config: Config, optimizer, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, config))


@dataclass
class TrainData:
    train: ImageDataset
    val: ImageDataset | None
    class_counts: np.ndarray
    sample_weights: np.ndarray | None


def build_datasets(config: Config, mean, std) -> TrainData:
    """Train/val datasets on a person-level fold (or all people with ``val=none``)."""
    from .data.extra import sample_weights, with_extra

    task = get_task(config.task)
    images = load_train(config.data_dir, config.age_bounds, config.label_fixes)
    if config.val == "fold":
        train_images, val_images = split_images(images, config.folds, config.fold, config.seed)
    else:
        train_images, val_images = images, None
    if train_images.empty:
        raise DataError(f"{config.data_dir}: no training images left after the split")
    train_images = with_extra(train_images, config, task.labels)  # extra_data rows: training only
    image_loader = build_train_image_loader(config)
    targets = train_images[task.label_column].to_numpy()
    counts = np.bincount(targets, minlength=task.num_classes)
    weights = sample_weights(train_images, targets, task.num_classes, config)

    def dataset(table, train):
        # soft or year targets train only: validation scores the hard bands the eval set is labelled with
        labels = task.train_targets(table, config) if train else table[task.label_column]
        return build_dataset(config, table["path"], mean, std, train, labels, image_loader, config.preload)

    val = dataset(val_images, False) if val_images is not None and not val_images.empty else None
    return TrainData(dataset(train_images, True), val, counts, weights)


def fit(config: Config, resume: Path | None = None) -> Path:
    """Train ``config.task`` and return the run folder; with ``resume``, continue from its last.pt."""
    from .checkpoint import claim_run_dir, load_checkpoint, save_checkpoint
    from .run_log import RunLog

    task = get_task(config.task)
    engine = Engine.from_config(config)
    seed_everything(config.seed)
    state = load_checkpoint(Path(resume) / "last.pt") if resume else None
    if state is not None and state["epoch"] + 1 >= config.epochs:  # finished: nothing to load or preload
        if engine.is_main:
            print(f"{resume}: all {config.epochs} epochs are done; nothing to resume", flush=True)
        engine.close()
        return Path(resume)
    # on resume the weights come from last.pt: never fetch or map pretrained ones again
    weights = "none" if state is not None else resolve_pretrained(config.backbone, config.pretrained)
    if engine.is_main and state is None:
        print(f"{config.task}: {config.backbone}, weights {weights} (pretrained={config.pretrained})", flush=True)
    model = build_model(dataclasses.replace(config, pretrained=weights))
    mean, std = model_mean_std(model)
    if engine.is_main:  # faces detected once per dataset, before any image loads; later runs read them
        for line in fill_crop_caches(config, engine.device):
            print(line, flush=True)
    engine.broadcast(None)  # the other ranks wait for the caches
    data = build_datasets(config, mean, std)
    model = engine.setup_model(model)
    loss_fn = build_loss(config, task.num_classes, data.class_counts).to(engine.device)
    mix = build_mixup(config, head_outputs(config, task.num_classes))  # the targets' width: years for a year head
    optimizer = build_optimizer(config, model)
    train_loader = engine.loader(data.train, config.batch_size, train=True, seed=config.seed,
                                 sample_weights=data.sample_weights)
    scheduler = build_scheduler(config, optimizer, len(train_loader))
    val_loader = engine.loader(data.val, config.batch_size, train=False) if data.val is not None else None

    if resume:
        run_dir = Path(resume)
    else:  # rank 0 claims the folder, the others take its word: the folders other nodes see may differ
        claimed = claim_run_dir(Path(config.project), config.task, config.name) if engine.is_main else None
        run_dir = engine.broadcast(claimed)
    start_epoch, best_f1 = 0, -1.0
    if state is not None:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        engine.scaler.load_state_dict(state["scaler"])
        start_epoch, best_f1 = state["epoch"] + 1, state["best_f1"]
    if engine.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    log = RunLog(run_dir, start_epoch) if engine.is_main else None

    for epoch in range(start_epoch, config.epochs):
        # reseed per epoch: the data order, augmentations and dropout of epoch k do not depend on
        # whether the run was resumed, so a resumed run ends with the same weights
        seed_everything(engine.rank_seed(config.seed + epoch))
        train_loader = engine.loader(data.train, config.batch_size, train=True, seed=config.seed + epoch,
                                     sample_weights=data.sample_weights)
        data.train.transform.set_random_seed(engine.rank_seed(config.seed + epoch))
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "lr": lr, **train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler,
                                                           engine, desc=f"{config.task} {epoch + 1}/{config.epochs}",
                                                           mix=mix)}
        improved = val_loader is None
        if val_loader is not None:
            val = evaluate(model, val_loader, loss_fn, engine, task.num_classes)
            row.update({k: val[k] for k in ("val_loss", "val_f1", "val_acc")})
            improved = val["val_f1"] > best_f1  # higher is better
            best_f1 = max(best_f1, val["val_f1"])
        loss_fn.to(engine.device)
        if engine.is_main:
            checkpoint = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": engine.scaler.state_dict(),
                          "epoch": epoch, "best_f1": best_f1, "config": config.to_dict(),
                          "class_names": list(task.class_names), "mean": list(mean), "std": list(std),
                          "metrics": {k: v for k, v in row.items() if v is not None}}
            if improved:
                save_checkpoint(run_dir / "best.pt", **checkpoint)
                if val_loader is not None:
                    log.log_confusion(confusion(val["targets"], val["preds"], task.num_classes), task.class_names,
                                      f"{config.task} val, epoch {epoch}: macro F1 {val['val_f1']:.4f}")
            save_checkpoint(run_dir / "last.pt", **checkpoint)
            log.log_epoch(row)
            print(_epoch_line(config, row), flush=True)
    if log is not None:
        log.close()
    engine.close()
    return run_dir


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _epoch_line(config: Config, row: dict) -> str:
    val = f" val_loss {row['val_loss']:.4f} val_f1 {row['val_f1']:.4f} val_acc {row['val_acc']:.4f}" \
        if row.get("val_f1") is not None else ""
    return (f"{config.task} epoch {row['epoch'] + 1}/{config.epochs}: train_loss {row['train_loss']:.4f}{val} "
            f"lr {row['lr']:.2e} {row['seconds']:.1f}s {row['images_per_s']:.1f} img/s")
