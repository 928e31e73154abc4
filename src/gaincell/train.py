"""Hardware-aware fine-tuning (and pre-training): AdamW, warm-up + cosine, clipping, accumulation, distillation.

Checkpoints are written atomically (a complete folder replaces the previous one) every ``save_every`` steps and on
Ctrl-C; a run resumes exactly where it stopped: batches are drawn from a generator seeded by (seed, step, micro-step,
rank), so the resumed loss curve is the uninterrupted one.  Written for ``torchrun``: with WORLD_SIZE > 1 it joins
the process group, each rank draws its own share of the same global batch and only rank 0 writes.  Data parallel by
default (DDP: every rank holds the whole model); ``fsdp=True`` shards parameters, gradients and optimizer state
(PyTorch FSDP2, ``fully_shard`` per transformer block) for models that do not fit one device.  Checkpoints hold full,
unsharded tensors in one format whatever the mode, so a run can resume with another number of processes or mode.

The processes and device live in :mod:`gaincell.distributed`, the checkpoint format in :mod:`gaincell.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gaincell.checkpoint import (
    checkpoint_step,
    full_state,
    load_optimizer_state,
    load_sharded_weights,
    param_groups,
    read_checkpoint,
    redo_cut_evaluation,
    write_checkpoint,
)
from gaincell.distributed import Distributed, is_peer_failure, resolve_device
from gaincell.errors import GaincellError
from gaincell.files import atomic_write_text, recover_folder
from gaincell.training_config import TrainConfig, trainable_maps

__all__ = ["TrainConfig", "evaluate_loss", "finetune", "param_groups", "resolve_device", "sample_batch", "training_loss"]


def _seed(*parts: int) -> int:
    """FNV-1a style hash of the parts: one independent seed per (run seed, step, micro-step, ...)."""
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


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def training_loss(model: nn.Module, x: Tensor, y: Tensor, teacher: nn.Module | None, cfg: TrainConfig) -> Tensor:
    """Cross-entropy of next-token prediction; with a teacher, mixed with the KL divergence from its distribution
    (``cfg.distill_weight``, at ``cfg.distill_temperature``)."""
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


@dataclass
class BestSoFar:
    """The lowest validation loss so far, its step (-1: the starting model) and the evaluations since.  Derived from
    the log (:meth:`from_log`), so a resumed run picks it up exactly where the checkpoint left it."""

    loss: float = math.inf
    step: int | None = None
    since: int = 0

    def update(self, step: int, loss: float) -> bool:
        """Count one evaluation; True when it is a new best."""
        if loss < self.loss:
            self.loss, self.step, self.since = loss, step, 0
            return True
        self.since += 1
        return False

    @classmethod
    def from_log(cls, log_path: Path) -> BestSoFar:
        best = cls()
        if log_path.is_file():
            for line in log_path.read_text().splitlines():
                record = json.loads(line) if line else {}
                if "val_loss" in record:
                    best.update(record["step"], record["val_loss"])
        return best


class _Run:
    """One call of :func:`finetune`: the model as trained (wrapped for DDP / FSDP), its optimizer, the log and the
    checkpoint; and how far the loop got, for when it is cut short."""

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, out: Path, device: torch.device | str | None, teacher: Any, meta: dict
    ) -> None:
        self.model, self.cfg, self.teacher, self.meta = model, cfg, teacher, meta
        self.dist = dist = Distributed(fsdp=cfg.fsdp)
        self.micro_batch = cfg.batch_size // cfg.grad_accum
        if self.micro_batch % dist.world:
            raise GaincellError(f"batch_size / grad_accum = {self.micro_batch} must be divisible by the {dist.world} processes")
        self.per_rank = self.micro_batch // dist.world
        self.device = resolve_device(str(device)) if device is not None else _device(model)
        self.out = out
        self.checkpoint = out / "checkpoint"
        self.log_path = out / "log.jsonl"
        self.wrapped: nn.Module = model  # DDP around the model, or compiled; the model itself under FSDP
        self.start = 0  # the first step this call runs
        self.step = -1  # the step in progress
        self.logged = -1  # the last step whose record is in the log
        self.pending: dict[str, Any] | None = None  # record of an optimizer step that is done but not yet logged
        self.last: dict[str, Any] = {}  # record of the last finished step
        self.terminated = False  # some rank received SIGTERM or Ctrl-C
        self.best = BestSoFar()
        self.best_folder = out / "best"

    # ------------------------------------------------------------------------------------------------ setup
    def restore(self, resume: bool) -> None:
        """Wrap the model and build the optimizer; with ``resume`` and a checkpoint, continue from it."""
        model, cfg, dist, ckpt = self.model, self.cfg, self.dist, self.checkpoint
        if resume and dist.main:
            recover_folder(ckpt, marker="state.json")
        dist.barrier()  # every rank sees the recovered checkpoint
        resuming = resume and (ckpt / "state.json").is_file()
        if resuming:  # without FSDP the full weights go into the model before it is wrapped
            settings = dataclasses.asdict(cfg)
            self.start = read_checkpoint(ckpt, model, settings, self.device, weights=not dist.fsdp) + 1
        self.logged = self.step = self.start - 1
        self.wrapped = dist.wrap(model, self.device)
        if resuming and dist.fsdp:  # rank 0 reads the checkpoint; its tensors are broadcast into every rank's shards
            from gaincell.hub import read_weights

            load_sharded_weights(model, read_weights(ckpt) if dist.main else {})
        if cfg.compile:  # graphs break at each attention call, which stays eager (see gaincell.model.gaincell_attention)
            self.wrapped = torch.compile(self.wrapped)
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay, cfg.decay_head_maps), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        if resuming:
            load_from = dist.main or not dist.fsdp
            saved = torch.load(ckpt / "optimizer.pt", weights_only=True, mmap=True) if load_from else {}
            load_optimizer_state(self.optimizer, saved, model, dist)
        self._prepare_log(resuming)
        dist.barrier()  # every rank sees the trimmed log

    def _prepare_log(self, resuming: bool) -> None:
        """Resuming: keep exactly the log lines up to the checkpoint; starting: a fresh log."""
        if not self.dist.main:
            return
        if resuming:
            if self.log_path.is_file():
                lines = self.log_path.read_text().splitlines()
                keep = [ln for ln in lines if ln and json.loads(ln).get("step", -1) < self.start]
                atomic_write_text(self.log_path, "".join(k + "\n" for k in keep))
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.log_path.exists():
                self.log_path.unlink()

    def redo_cut_evaluation(self, val_ids: Tensor | None) -> None:
        """The evaluation of the checkpointed step, if an interruption cut it (FSDP: every rank evaluates)."""
        dist = self.dist
        if self.start > 0 and val_ids is not None and (dist.main or dist.fsdp) and self.log_path.is_file():
            step = self.start - 1
            evaluate = (lambda: evaluate_loss(self.model, val_ids, self.cfg)) if self.cfg.evaluates_at(step) else None
            redo_cut_evaluation(self.log_path, step, evaluate, write=dist.main)

    # ------------------------------------------------------------------------------------------------ best and patience
    def start_tracking(self, val_ids: Tensor | None) -> None:
        """Pick up the best evaluation from the log; a fresh run first evaluates the starting model (with
        ``keep_best`` or ``patience``), so a run never ships a model worse than the one it started from."""
        cfg = self.cfg
        if val_ids is None or not (cfg.keep_best or cfg.patience):
            return
        if self.start == 0:
            val_loss = self.dist.mean(evaluate_loss(self.model, val_ids, cfg))
            self._log({"step": -1, "val_loss": val_loss, "val_ppl": math.exp(val_loss), "initial": True})
        self.best = BestSoFar.from_log(self.log_path)
        # the best is the model as it stands (just evaluated, or the checkpoint's own evaluation): make sure it is kept
        if cfg.keep_best and self.best.step == self.start - 1 and _best_step(self.best_folder) != self.best.step:
            self._save_best()

    def track(self, record: dict[str, Any]) -> None:
        """Count an evaluation: keep the weights when it is the best so far."""
        if "val_loss" in record and self.best.update(record["step"], record["val_loss"]) and self.cfg.keep_best:
            self._save_best()

    @property
    def out_of_patience(self) -> bool:
        return self.cfg.patience is not None and self.best.since >= self.cfg.patience

    def _save_best(self) -> None:
        """The current weights into ``out/best`` (every rank calls this: FSDP gathers the shards)."""
        from gaincell.hub import save

        weights, _ = full_state(self.model, None, self.dist)
        if self.dist.main:
            metadata = {**self.meta, "best": {"step": self.best.step, "val_loss": self.best.loss}}
            save(self.model, self.best_folder, metadata=metadata, state_dict=weights)
        self.dist.barrier()

    def restore_best(self) -> None:
        """Put the best weights back into the model before it is shipped (every rank calls this)."""
        from gaincell.hub import read_weights

        if not (self.cfg.keep_best and (self.best_folder / "model.safetensors").is_file()):
            return
        if self.dist.fsdp:
            load_sharded_weights(self.model, read_weights(self.best_folder) if self.dist.main else {})
        else:
            self.model.load_state_dict(read_weights(self.best_folder))

    # ------------------------------------------------------------------------------------------------ one step
    def optimizer_step(self, step: int, train_ids: Tensor, stop_requested: bool) -> dict[str, Any]:
        """Accumulate the gradients of the step's micro-batches and apply them; returns the step's log record."""
        cfg = self.cfg
        self.step = step
        lr = cfg.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for micro in range(cfg.grad_accum):
            loss += self._micro_step(step, micro, train_ids) / cfg.grad_accum
        loss, self.terminated = self.dist.mean_and_any(loss, stop_requested)
        if not math.isfinite(loss):
            raise GaincellError(f"training diverged: loss {loss} at step {step} (try a lower lr)")
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.pending = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        return self.pending

    def _micro_step(self, step: int, micro: int, train_ids: Tensor) -> float:
        """Forward and backward of this rank's share of one micro-batch; returns its loss."""
        cfg, dist = self.cfg, self.dist
        # the same global micro-batch whatever the number of processes; each rank takes its share
        x, y = sample_batch(train_ids, self.micro_batch, cfg.context, _seed(cfg.seed, step, micro))
        share = slice(dist.rank * self.per_rank, (dist.rank + 1) * self.per_rank)
        x, y = x[share].to(self.device), y[share].to(self.device)
        sync = micro == cfg.grad_accum - 1 or not dist.enabled
        if dist.fsdp:  # reduce-scatter the gradients only on the last micro-step
            self.model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        wrapped = self.wrapped
        no_sync = getattr(wrapped, "_orig_mod", wrapped).no_sync if not (sync or dist.fsdp) else contextlib.nullcontext
        with no_sync():
            loss = training_loss(wrapped, x, y, self.teacher, cfg)
            self.scaler.scale(loss / cfg.grad_accum).backward()
        return float(loss.detach())

    def evaluate_and_log(self, record: dict[str, Any], val_ids: Tensor | None, started_at: float) -> None:
        """Validation loss when scheduled, then the record into the log when due."""
        cfg, step = self.cfg, record["step"]
        final = step == cfg.steps - 1
        if val_ids is not None and cfg.evaluates_at(step):
            val_loss = self.dist.mean(evaluate_loss(self.model, val_ids, cfg))
            record.update(val_loss=val_loss, val_ppl=math.exp(val_loss))
        record["elapsed_s"] = round(time.time() - started_at, 2)
        if step % cfg.log_every == 0 or "val_loss" in record or final:
            self._log(record)
        self.pending = None
        self.last = record

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        self.logged = record["step"]

    def checkpoint_and_stop(self, step: int, stop_after: int | None) -> bool:
        """Write the checkpoint when due; True when the run stops after this step (a signal, ``stop_after``, or out
        of patience)."""
        cfg = self.cfg
        final = step == cfg.steps - 1
        requested = self.terminated or (stop_after is not None and step + 1 >= stop_after)
        stopping = (requested or self.out_of_patience) and not final
        if (step + 1) % cfg.save_every == 0 or final or stopping:
            write_checkpoint(self.checkpoint, self.model, self.optimizer, step, dataclasses.asdict(cfg), self.meta, self.dist)
        self.dist.barrier()
        return stopping

    # ------------------------------------------------------------------------------------------------ cut short
    def save_interrupted(self) -> None:
        """A second Ctrl-C (KeyboardInterrupt): log the applied step, checkpoint the last complete one if possible."""
        dist, step, ckpt = self.dist, self.step, self.checkpoint
        done = step if self.pending is not None else step - 1  # was the interrupted step's update applied?
        if self.pending is not None and self.logged < step:
            self.pending["interrupted"] = True  # its scheduled evaluation (if any) is redone on resume
            self._log(self.pending)
        if dist.fsdp:  # gathering the shards needs every rank, which may already be gone: keep the last checkpoint
            if dist.main:
                print(f"interrupted: the last periodic checkpoint in {ckpt} is kept; run again to resume", file=sys.stderr)
        elif dist.main and done >= self.start:
            write_checkpoint(ckpt, self.model, self.optimizer, done, dataclasses.asdict(self.cfg), self.meta, dist)
            print(f"interrupted: checkpoint of step {done} written to {ckpt}; run again to resume", file=sys.stderr)

    def peer_failure(self, exc: BaseException) -> GaincellError:
        """The error that says another process of the job died, and where the run can resume from."""
        kept = checkpoint_step(self.checkpoint)
        return GaincellError(
            f"rank {self.dist.rank}: a collective operation failed at step {self.step}: another process of this job "
            f"probably failed or was killed ({str(exc).splitlines()[0][:160]}); "
            + (
                f"the last complete checkpoint, step {kept}, is in {self.checkpoint}: "
                if kept is not None
                else "no checkpoint yet: "
            )
            + "run the same command again to resume (with any number of processes)"
        )

    # ------------------------------------------------------------------------------------------------ finish
    def summary(self, stop_signal: str | None) -> dict[str, Any]:
        """What the run did; ``stopped_at`` (and ``stopped_by``) when it stopped before its last step."""
        cfg, last = self.cfg, self.last
        if not last and self.log_path.is_file():  # resumed a finished run: nothing was left to do
            lines = [ln for ln in self.log_path.read_text().splitlines() if ln]
            last = json.loads(lines[-1]) if lines else {}
        summary = {"steps": cfg.steps, "final": last, "config": dataclasses.asdict(cfg)}
        if self.best.step is not None:
            summary["best"] = {"step": self.best.step, "val_loss": self.best.loss, "val_ppl": math.exp(self.best.loss)}
        if self.out_of_patience:  # a finished run: it ships its model
            summary["early_stopped_at"] = last.get("step")
        elif last and last.get("step", cfg.steps - 1) < cfg.steps - 1:  # stopped early on request: no final model yet
            summary["stopped_at"] = last["step"]
            if self.terminated:  # this rank's signal, or SIGTERM when another rank was signalled
                summary["stopped_by"] = stop_signal or "SIGTERM"
        return summary

    def save_final(self, summary: dict[str, Any], tokenizer: Any) -> None:
        """The trained model into ``out/model`` and the summary into ``out/summary.json`` (every rank calls this)."""
        weights, _ = full_state(self.model, None, self.dist)
        if not self.dist.main:
            return
        from gaincell.hub import save

        cfg, meta, last = self.cfg, self.meta, summary["final"]
        if cfg.keep_best and "best" in summary:  # the weights restored by restore_best
            meta.setdefault("metrics", {})["val_ppl"] = summary["best"]["val_ppl"]
            meta["best_step"] = summary["best"]["step"]
        elif "val_loss" in last:
            meta.setdefault("metrics", {})["val_ppl"] = last["val_ppl"]
        meta["training"] = {"steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size * cfg.context}
        save(self.model, self.out / "model", tokenizer=tokenizer, metadata=meta, state_dict=weights)
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")


def _best_step(folder: Path) -> int | None:
    """The step whose weights ``folder`` (``out/best``) holds, or None."""
    try:
        return int(json.loads((folder / "gaincell.json").read_text())["best"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _recording_targets(model: nn.Module, rate: float | None) -> Any:
    """Record the per-head EMA adaptation targets at ``rate`` while training on analog hardware (see
    :class:`~gaincell.attention.HeadMaps`); the model records nothing afterwards."""
    from gaincell.attention import attention_spec, head_maps
    from gaincell.config import HardwareConfig

    maps = list(head_maps(model)) if rate is not None and isinstance(attention_spec(model), HardwareConfig) else []
    for m in maps:
        m.target_rate = rate
    try:
        yield
    finally:
        for m in maps:
            m.target_rate = None


@contextlib.contextmanager
def _trainable(model: nn.Module, which: str) -> Any:
    """``head-maps``: only the per-head maps train; ``head-maps:v,out``: only the named maps.  Everything else is frozen
    for the run and unfrozen after it."""
    names = trainable_maps(which)
    if names is None:
        yield
        return
    from gaincell.attention import head_maps

    maps = list(head_maps(model))
    if not maps:
        raise GaincellError(f"trainable = {which!r} needs a model converted to analog hardware (it has no per-head maps)")
    train = {id(getattr(m, f"{name}_{part}")) for m in maps for name in names for part in ("scale", "bias")}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in train]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _freeze(teacher: nn.Module | None) -> None:
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)


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

    ``teacher``: distil from it (``cfg.distill_weight``; without a teacher the loss is plain cross-entropy).
    ``cfg.keep_best``: ship the weights of the lowest validation loss, the starting model's included (kept in
    ``out/best`` while training); ``cfg.patience``: stop after that many evaluations without a new best.
    ``stop_after``: checkpoint and return after that many steps (of the whole run); run again to resume.
    ``device``: where to train (default: where the model is); with ``cfg.fsdp`` the model may stay on the CPU and only
    its shards are moved there.

    Returns a summary with the final validation loss/perplexity (when ``val_ids`` is given).
    """
    from tqdm import tqdm

    cfg.validate()
    with _recording_targets(model, cfg.target_ema), _trainable(model, cfg.trainable):
        run = _Run(model, cfg, Path(out), device, teacher, dict(metadata or {}))
        dist = run.dist
        model.train()
        _freeze(teacher)
        run.restore(resume)
        started_at = time.time()
        run.redo_cut_evaluation(val_ids)
        run.start_tracking(val_ids)
        first = cfg.steps if run.out_of_patience else run.start  # a run that already stopped early has nothing left to do
        bar = tqdm(total=cfg.steps, initial=run.start, desc="training", unit="step", disable=not (progress and dist.main))
        with _StopRequest(announce=dist.main) as stop_request, bar:
            try:
                for step in range(first, cfg.steps):
                    record = run.optimizer_step(step, train_ids, stop_request.requested)
                    run.evaluate_and_log(record, val_ids, started_at)
                    run.track(record)
                    val_ppl = {"val_ppl": f"{record['val_ppl']:.1f}"} if "val_ppl" in record else {}
                    bar.set_postfix(loss=f"{record['loss']:.3f}", **val_ppl)
                    bar.update(1)
                    if run.checkpoint_and_stop(step, stop_after):
                        break
            except RuntimeError as exc:
                if not (dist.enabled and is_peer_failure(exc)):
                    raise
                raise run.peer_failure(exc) from exc
            except KeyboardInterrupt:
                run.save_interrupted()
                raise
        summary = run.summary(stop_request.signal)
        if "stopped_at" not in summary:
            run.restore_best()
            run.save_final(summary, tokenizer)
        return summary
