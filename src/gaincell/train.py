"""Hardware-aware fine-tuning (and pre-training): AdamW, warm-up + cosine, clipping, accumulation, distillation.

Checkpoints are written atomically (a complete folder replaces the previous one) every ``save_every`` steps and on
Ctrl-C; a run resumes exactly where it stopped: batches are drawn from a generator seeded by (seed, step, micro-step,
rank), so the resumed loss curve is the uninterrupted one.  Written for ``torchrun``: with WORLD_SIZE > 1 it joins
the process group, each rank draws its own share of the same global batch and only rank 0 writes.  Data parallel by
default (DDP: every rank holds the whole model); ``fsdp=True`` shards parameters, gradients and optimizer state
(PyTorch FSDP2, ``fully_shard`` per transformer block) for models that do not fit one device.  Checkpoints hold full,
unsharded tensors in one format whatever the mode, so a run can resume with another number of processes or mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gaincell.errors import GaincellError
from gaincell.files import atomic_dir, atomic_write_text, recover_folder

__all__ = ["TrainConfig", "finetune"]


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step (all ranks and micro-steps together)
    context: int = 128
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 16
    save_every: int = 100
    log_every: int = 10
    seed: int = 1337
    distill_weight: float = 0.0  # 0 = plain cross-entropy; 1 = only the teacher's distribution
    distill_temperature: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast for the digital layers; the analog arrays stay float32)
    lr_decay_steps: int | None = None  # cosine length (default: steps); the paper decays over 600,000 iterations
    fsdp: bool = False  # shard parameters, gradients and optimizer state across processes (FSDP2) instead of DDP
    compile: bool = False  # torch.compile the digital layers (the analog attention always runs eagerly)

    def validate(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "context": self.context >= 2,
            "grad_accum": self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
            "lr": self.lr > 0,
            "min_lr": 0 <= self.min_lr <= self.lr,
            "warmup": self.warmup >= 0,
            "grad_clip": self.grad_clip >= 0,
            "eval_every": self.eval_every >= 1,
            "save_every": self.save_every >= 1,
            "distill_weight": 0 <= self.distill_weight <= 1,
            "distill_temperature": self.distill_temperature > 0,
            "precision": self.precision in ("fp32", "bf16", "fp16"),
            "fsdp": not (self.fsdp and self.precision == "fp16"),  # no sharded loss scaler: use bf16 with FSDP
        }
        for name, ok in checks.items():
            if not ok:
                raise GaincellError(f"invalid training setting {name} = {getattr(self, name)!r}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at the last step."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, (self.lr_decay_steps or self.steps) - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


def _seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def sample_batch(ids: Tensor, batch: int, context: int, seed: int) -> tuple[Tensor, Tensor]:
    """``batch`` random windows of ``context`` tokens and their next-token targets, from a seeded generator."""
    if ids.numel() < context + 2:
        raise GaincellError(f"training text has {ids.numel()} tokens: need more than context + 1 = {context + 1}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - context - 1, (batch,), generator=g)
    x = torch.stack([ids[s : s + context] for s in starts.tolist()])
    y = torch.stack([ids[s + 1 : s + context + 1] for s in starts.tolist()])
    return x, y


def _trained(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(name, parameter) pairs with and without weight decay, in the optimizer's order."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append((name, p))
    return decay, no_decay


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = _trained(model)
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]


def _param_names(model: nn.Module) -> list[str]:
    """Parameter names by optimizer index (the index ``optimizer.state_dict()`` uses)."""
    decay, no_decay = _trained(model)
    return [n for n, _ in decay + no_decay]


def _shard(model: nn.Module, device: torch.device, world: int) -> None:
    """FSDP2: ``fully_shard`` every transformer block, then the root (embeddings, final norm, head; tied weights stay
    together).  CPU-resident parameters are moved to ``device`` shard by shard, so the whole model never has to fit."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]
    from torch.distributed.device_mesh import init_device_mesh

    block_types = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_types]
    if not blocks:
        raise GaincellError(
            f"--fsdp: cannot find the transformer blocks of {type(model).__name__} (it declares no _no_split_modules)"
        )
    mesh = init_device_mesh(device.type, (world,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


class _Dist:
    def __init__(self, fsdp: bool = False) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        self.fsdp = fsdp and self.enabled  # sharding over one process is the unsharded model
        if self.enabled and not torch.distributed.is_initialized():
            # gloo for CPU tensors, NCCL for CUDA ones (a CPU run on a GPU machine still works)
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around the model, or the model sharded in place (FSDP), when several processes train it."""
        if self.fsdp:
            _shard(model, device, self.world)
            return model
        model.to(device)
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: float) -> float:
        return self.mean_and_any(value, False)[0]

    def mean_and_any(self, value: float, flag: bool) -> tuple[float, bool]:
        """The mean of ``value`` over ranks and whether any rank raised ``flag`` (one all-reduce)."""
        if not self.enabled:
            return value, flag
        t = torch.tensor([value, float(flag)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t[0]) / self.world, bool(t[1] > 0)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


_PEER_FAILURE = ("closed by peer", "reset by peer", "Broken pipe", "communicator was aborted", "remote worker")


def _peer_failure(exc: BaseException) -> bool:
    """Did a collective fail because another process of the job died (gloo / NCCL errors)?"""
    dist_error = getattr(torch.distributed, "DistError", ())
    return isinstance(exc, dist_error) or any(s in str(exc) for s in _PEER_FAILURE)


def _checkpoint_step(ckpt: Path) -> int | None:
    try:
        return int(json.loads((ckpt / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


class _StopRequest:
    """SIGTERM (a scheduler's pre-emption, torchrun stopping the job) and Ctrl-C only set a flag; the training loop
    reads it once per step, agreed across ranks, finishes that step, writes its checkpoint and stops — so a
    checkpoint never holds a half-applied optimizer step.  A second Ctrl-C stops at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool) -> None:
        self.signal: str | None = None
        self._announce = announce
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal == "SIGINT":
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            if self._announce and signum == signal.SIGINT:
                print("\ngaincell: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; a CUDA request without a GPU is an error.

    Under ``torchrun`` 'auto' and 'cuda' mean this process's GPU, ``cuda:$LOCAL_RANK`` (made the current device)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GaincellError(f"--device {name}: no CUDA GPU is available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise GaincellError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def _loss(model: nn.Module, x: Tensor, y: Tensor, teacher: nn.Module | None, cfg: TrainConfig) -> Tensor:
    with _autocast(x.device, cfg.precision):
        logits = model(input_ids=x, use_cache=False).logits.float()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    if teacher is None or cfg.distill_weight == 0:
        return ce
    with torch.no_grad(), _autocast(x.device, cfg.precision):
        t_logits = teacher(input_ids=x, use_cache=False).logits.float()
    tau = cfg.distill_temperature
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(logits / tau, -1).flatten(0, 1),
        torch.log_softmax(t_logits / tau, -1).flatten(0, 1),
        log_target=True,
        reduction="batchmean",
    )
    return (1 - cfg.distill_weight) * ce + cfg.distill_weight * tau * tau * kl


@torch.no_grad()
def evaluate_loss(model: nn.Module, ids: Tensor, cfg: TrainConfig) -> float:
    """Mean cross-entropy on ``eval_batches`` fixed batches of ``ids`` (the same batches at every evaluation)."""
    was = model.training
    model.eval()
    total = 0.0
    per = max(1, cfg.batch_size // cfg.grad_accum)
    for i in range(cfg.eval_batches):
        x, y = sample_batch(ids, per, cfg.context, _seed(cfg.seed, 0x7A1, i))
        logits = model(input_ids=x.to(_device(model)), use_cache=False).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(logits.device).flatten()))
    model.train(was)
    return total / cfg.eval_batches


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _generators(model: nn.Module) -> list[torch.Generator]:
    from gaincell.attention import head_maps, is_converted

    if not is_converted(model):
        return []
    return [m.generator for m in head_maps(model) if m.generator is not None]


def _full_state(model: nn.Module, opt: torch.optim.Optimizer | None, dist: _Dist) -> tuple[dict | None, dict | None]:
    """Unsharded model weights and optimizer state (optimizer indices as ``optimizer.state_dict()``), on rank 0.

    Under FSDP every rank must call this (it gathers the shards); elsewhere it is local and (None, ...) means "use the
    model's own state_dict"."""
    if not dist.fsdp:
        return None, None if opt is None else opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if opt is None:
        return weights, None
    by_name = get_optimizer_state_dict(model, opt, options=options)
    if not dist.main:
        return None, None
    index = {name: i for i, name in enumerate(_param_names(model))}
    state = {index[name]: value for name, value in by_name["state"].items()}
    groups = [{**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def _load_sharded_weights(model: nn.Module, weights: dict) -> None:
    """FSDP: the full weights given on rank 0 (``{}`` elsewhere) broadcast into every rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _load_optimizer(opt: torch.optim.Optimizer, state: dict, model: nn.Module, dist: _Dist) -> None:
    """``state`` as ``optimizer.state_dict()``; under FSDP given on rank 0 only (``{}`` elsewhere) and broadcast."""
    if not dist.fsdp:
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model)
    by_name = {}
    if state:
        by_name = {
            "state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]],
        }
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_optimizer_state_dict(model, opt, by_name, options=options)


def _write_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig, meta: dict, dist: _Dist
) -> None:
    """Every rank calls this (FSDP gathers the shards); only rank 0 writes."""
    from safetensors.torch import save_file

    from gaincell.hub import write_model_files

    weights, opt_state = _full_state(model, opt, dist)
    if not dist.main:
        return
    with atomic_dir(path) as tmp:
        write_model_files(model, tmp, metadata=meta, state_dict=weights)
        torch.save(opt_state, tmp / "optimizer.pt")
        gens = {f"gen{i}": g.get_state() for i, g in enumerate(_generators(model))}
        if gens:
            save_file(gens, tmp / "noise_state.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": dataclasses.asdict(cfg)}, indent=2))


def _read_checkpoint(path: Path, model: nn.Module, cfg: TrainConfig, device: torch.device, weights: bool) -> int:
    """Noise generators and (``weights``) the weights into the not yet wrapped model; returns the checkpointed step."""
    from safetensors.torch import load_file

    from gaincell.attention import head_maps, is_converted
    from gaincell.hub import read_weights

    state = json.loads((path / "state.json").read_text())
    saved = state["config"]
    for key in ("batch_size", "context", "grad_accum", "seed", "steps"):
        if saved.get(key) != getattr(cfg, key):
            raise GaincellError(
                f"cannot resume from {path}: it was written with {key} = {saved.get(key)!r}, now {getattr(cfg, key)!r} "
                "(use the same settings, or a new --out folder)"
            )
    if weights:
        model.load_state_dict(read_weights(path))
    if (path / "noise_state.safetensors").is_file():
        if is_converted(model):  # the streams live where training runs (the model may still be on the CPU)
            for maps in head_maps(model):
                maps.noise_generator(device)
        states = load_file(path / "noise_state.safetensors")
        for i, g in enumerate(_generators(model)):
            saved_state = states.get(f"gen{i}")
            if saved_state is None or saved_state.numel() != g.get_state().numel():  # written on another device type
                print(
                    f"gaincell: {path} holds noise streams of another device type: layer noise restarts from its seed",
                    file=sys.stderr,
                )
                break
            g.set_state(saved_state)
    return int(state["step"])


def _redo_cut_evaluation(log_path: Path, model: nn.Module, val_ids: Tensor, cfg: TrainConfig, step: int, write: bool) -> None:
    """If the checkpointed step was interrupted before its scheduled evaluation, evaluate now and patch its record."""
    lines = log_path.read_text().splitlines()
    if not lines:
        return
    rec = json.loads(lines[-1])
    if rec.get("step") != step or not rec.pop("interrupted", False):
        return
    if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
        vl = evaluate_loss(model, val_ids, cfg)
        rec.update(val_loss=vl, val_ppl=math.exp(vl))
    lines[-1] = json.dumps(rec)
    if write:
        atomic_write_text(log_path, "".join(ln + "\n" for ln in lines))


def finetune(
    model: nn.Module,
    train_ids: Tensor,
    val_ids: Tensor | None,
    cfg: TrainConfig,
    out: str | Path,
    *,
    teacher: nn.Module | None = None,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; writes ``out/log.jsonl``, ``out/checkpoint/`` and the final ``out/model/``.

    ``stop_after``: checkpoint and return after that many steps (of the whole run); run again to resume.
    ``device``: where to train (default: where the model is); with ``cfg.fsdp`` the model may stay on the CPU and only
    its shards are moved there.

    Returns a summary with the final validation loss/perplexity (when ``val_ids`` is given).
    """
    cfg.validate()
    dist = _Dist(fsdp=cfg.fsdp)
    out = Path(out)
    micro = cfg.batch_size // cfg.grad_accum
    if micro % dist.world:
        raise GaincellError(f"batch_size / grad_accum = {micro} must be divisible by the {dist.world} processes")
    per_rank = micro // dist.world
    device = resolve_device(str(device)) if device is not None else _device(model)
    model.train()
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    ckpt = out / "checkpoint"
    log_path = out / "log.jsonl"
    start = 0
    meta = dict(metadata or {})
    if resume and dist.main:
        recover_folder(ckpt, marker="state.json")
    dist.barrier()  # every rank sees the recovered checkpoint
    resuming = resume and (ckpt / "state.json").is_file()
    if resuming:  # without FSDP the full weights go into the model before it is wrapped
        start = _read_checkpoint(ckpt, model, cfg, device, weights=not dist.fsdp) + 1
    ddp = dist.wrap(model, device)
    if resuming and dist.fsdp:  # rank 0 reads the checkpoint; its tensors are broadcast into every rank's shards
        from gaincell.hub import read_weights

        _load_sharded_weights(model, read_weights(ckpt) if dist.main else {})
    if cfg.compile:  # graphs break at each attention call, which stays eager (see gaincell.model.gaincell_attention)
        ddp = torch.compile(ddp)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    if resuming:
        saved = torch.load(ckpt / "optimizer.pt", weights_only=True, mmap=True) if dist.main or not dist.fsdp else {}
        _load_optimizer(opt, saved, model, dist)
        if dist.main and log_path.is_file():  # keep exactly the log lines up to the checkpoint
            keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln).get("step", -1) < start]
            atomic_write_text(log_path, "".join(k + "\n" for k in keep))
    elif dist.main:
        out.mkdir(parents=True, exist_ok=True)
        if log_path.exists():
            log_path.unlink()
    dist.barrier()  # every rank sees the trimmed log
    bar = None
    if progress and dist.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step")
    last: dict[str, Any] = {}
    step = start - 1
    t0 = time.time()
    logged = start - 1  # the last step whose record is in the log
    pending: dict[str, Any] | None = None  # record of an optimizer step that is done but not yet logged

    def log(record: dict[str, Any]) -> None:
        nonlocal logged
        if dist.main:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        logged = record["step"]

    if start > 0 and val_ids is not None and (dist.main or dist.fsdp) and log_path.is_file():
        _redo_cut_evaluation(log_path, model, val_ids, cfg, start - 1, write=dist.main)  # FSDP: every rank evaluates

    stop_request = _StopRequest(announce=dist.main).__enter__()
    terminated = False
    try:
        for step in range(start, cfg.steps):
            lr = cfg.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for m in range(cfg.grad_accum):
                # the same global micro-batch whatever the number of processes; each rank takes its share
                x, y = sample_batch(train_ids, micro, cfg.context, _seed(cfg.seed, step, m))
                x = x[dist.rank * per_rank : (dist.rank + 1) * per_rank].to(device)
                y = y[dist.rank * per_rank : (dist.rank + 1) * per_rank].to(device)
                sync = m == cfg.grad_accum - 1 or not dist.enabled
                if dist.fsdp:  # reduce-scatter the gradients only on the last micro-step
                    model.set_requires_gradient_sync(sync)  # type: ignore[operator]
                no_sync = getattr(ddp, "_orig_mod", ddp).no_sync if not (sync or dist.fsdp) else contextlib.nullcontext
                with no_sync():
                    loss = _loss(ddp, x, y, teacher, cfg)
                    scaler.scale(loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach()) / cfg.grad_accum
            loss_sum, terminated = dist.mean_and_any(loss_sum, stop_request.requested)
            if not math.isfinite(loss_sum):
                raise GaincellError(f"training diverged: loss {loss_sum} at step {step} (try a lower --lr)")
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            gnorm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
            scaler.step(opt)
            scaler.update()
            record: dict[str, Any] = {"step": step, "loss": loss_sum, "lr": lr, "grad_norm": gnorm}
            pending = record
            final = step == cfg.steps - 1
            if val_ids is not None and ((step + 1) % cfg.eval_every == 0 or final):
                vl = dist.mean(evaluate_loss(model, val_ids, cfg))
                record.update(val_loss=vl, val_ppl=math.exp(vl))
            record["elapsed_s"] = round(time.time() - t0, 2)
            if step % cfg.log_every == 0 or "val_loss" in record or final:
                log(record)
            pending = None
            last = record
            if bar is not None:
                bar.set_postfix(
                    loss=f"{loss_sum:.3f}", **({"val_ppl": f"{record['val_ppl']:.1f}"} if "val_ppl" in record else {})
                )
                bar.update(1)
            stopping = (terminated or (stop_after is not None and step + 1 >= stop_after)) and not final
            if (step + 1) % cfg.save_every == 0 or final or stopping:
                _write_checkpoint(ckpt, model, opt, step, cfg, meta, dist)
            dist.barrier()
            if stopping:
                break
    except RuntimeError as exc:
        if not (dist.enabled and _peer_failure(exc)):
            raise
        kept = _checkpoint_step(ckpt)
        raise GaincellError(
            f"rank {dist.rank}: a collective operation failed at step {step}: another process of this job probably "
            f"failed or was killed ({str(exc).splitlines()[0][:160]}); "
            + (f"the last complete checkpoint, step {kept}, is in {ckpt}: " if kept is not None else "no checkpoint yet: ")
            + "run the same command again to resume (with any number of processes)"
        ) from exc
    except KeyboardInterrupt:
        done = step if pending is not None else step - 1  # was the interrupted step's update applied?
        if pending is not None and logged < step:
            pending["interrupted"] = True  # its scheduled evaluation (if any) is redone on resume
            log(pending)
        if dist.fsdp:  # gathering the shards needs every rank, which may already be gone: keep the last checkpoint
            if dist.main:
                print(f"interrupted: the last periodic checkpoint in {ckpt} is kept; run again to resume", file=sys.stderr)
        elif dist.main and done >= start:
            _write_checkpoint(ckpt, model, opt, done, cfg, meta, dist)
            print(f"interrupted: checkpoint of step {done} written to {ckpt}; run again to resume", file=sys.stderr)
        raise
    finally:
        stop_request.__exit__(None, None, None)
        if bar is not None:
            bar.close()
    if not last and log_path.is_file():  # resumed a finished run: nothing was left to do
        lines = [ln for ln in log_path.read_text().splitlines() if ln]
        last = json.loads(lines[-1]) if lines else {}
    summary = {"steps": cfg.steps, "final": last, "config": dataclasses.asdict(cfg)}
    if last and last.get("step", cfg.steps - 1) < cfg.steps - 1:  # stopped early on request: no final model yet
        summary["stopped_at"] = last["step"]
        if terminated:  # this rank's signal, or SIGTERM when another rank was signalled
            summary["stopped_by"] = stop_request.signal or "SIGTERM"
        return summary
    weights, _ = _full_state(model, None, dist)
    if dist.main:
        from gaincell.hub import save

        if "val_loss" in last:
            meta.setdefault("metrics", {})["val_ppl"] = last["val_ppl"]
        meta["training"] = {"steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size * cfg.context}
        save(model, out / "model", tokenizer=tokenizer, metadata=meta, state_dict=weights)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
