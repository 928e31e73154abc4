"""Training checkpoints: what is written, how it is gathered from shards, and how a run is put back from it.

A checkpoint is one folder, replaced atomically (a complete folder replaces the previous one):

* ``model.safetensors`` + ``config.json`` + ``gaincell.json``: full, unsharded weights (see :mod:`gaincell.hub`);
* ``optimizer.pt``: ``optimizer.state_dict()``, parameters named by their optimizer index;
* ``noise_state.safetensors``: the per-layer noise generators of noisy hardware, so noise continues exactly;
* ``state.json``: the last completed step and the training settings.

The format is the same whatever wrote it (one process, DDP or FSDP), so a run can resume with another number of
processes or another mode.  Under FSDP the optimizer state is keyed by parameter name; it is converted to and from
the index form here, with :func:`param_names` giving the order the optimizer was built in (:func:`param_groups`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaincell.distributed import Distributed
from gaincell.errors import GaincellError
from gaincell.files import atomic_dir, atomic_write_text

__all__ = [
    "RESUME_MUST_MATCH",
    "checkpoint_step",
    "full_state",
    "load_optimizer_state",
    "load_sharded_weights",
    "noise_generators",
    "param_groups",
    "param_names",
    "read_checkpoint",
    "redo_cut_evaluation",
    "write_checkpoint",
]

#: Settings a resumed run must share with the checkpoint: they decide which batches each step draws.
#: (``decay_head_maps`` because a resumed optimizer takes its groups' weight decay from the checkpoint.)
RESUME_MUST_MATCH = ("batch_size", "context", "decay_head_maps", "grad_accum", "seed", "steps", "trainable")


# ---------------------------------------------------------------------------------------------------- optimizer order
def _trained(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], ...]:
    """(name, parameter) pairs in the optimizer's order: weight matrices, per-head maps, other vectors.

    The order (and the three groups) do not depend on whether the maps decay, so optimizer indices mean the same
    parameter in every run."""
    from gaincell.attention import head_maps

    map_ids = {id(p) for maps in head_maps(model) for p in maps.parameters()}
    matrices, maps, vectors = [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (maps if id(p) in map_ids else matrices if p.dim() >= 2 else vectors).append((name, p))
    return matrices, maps, vectors


def param_groups(model: nn.Module, weight_decay: float, decay_head_maps: bool = True) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight matrices decay; the per-head maps (scales and offsets) decay when
    ``decay_head_maps`` (the published trainer's rule: its maps are stored as (1, H, 1, 1) tensors, so its
    "two or more dimensions" test decays them); biases and norms never do."""
    matrices, maps, vectors = _trained(model)
    return [
        {"params": [p for _, p in matrices], "weight_decay": weight_decay},
        {"params": [p for _, p in maps], "weight_decay": weight_decay if decay_head_maps else 0.0},
        {"params": [p for _, p in vectors], "weight_decay": 0.0},
    ]


def param_names(model: nn.Module) -> list[str]:
    """Parameter names by optimizer index (the index ``optimizer.state_dict()`` uses)."""
    return [n for group in _trained(model) for n, _ in group]


def noise_generators(model: nn.Module) -> list[torch.Generator]:
    """The per-layer noise generators of a model converted to noisy hardware, in layer order (empty otherwise)."""
    from gaincell.attention import head_maps, is_converted

    if not is_converted(model):
        return []
    return [m.generator for m in head_maps(model) if m.generator is not None]


# ---------------------------------------------------------------------------------------------------- gather / scatter
def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, dist: Distributed) -> tuple[dict | None, dict | None]:
    """Unsharded model weights and optimizer state (optimizer indices as ``optimizer.state_dict()``), on rank 0.

    Under FSDP every rank must call this (it gathers the shards); elsewhere it is local and (None, ...) means "use the
    model's own state_dict"."""
    if not dist.fsdp:
        return None, None if optimizer is None else optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if optimizer is None:
        return weights, None
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not dist.main:
        return None, None
    index = {name: i for i, name in enumerate(param_names(model))}
    state = {index[name]: value for name, value in by_name["state"].items()}
    groups = [{**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_sharded_weights(model: nn.Module, weights: dict) -> None:
    """FSDP: the full weights given on rank 0 (``{}`` elsewhere) broadcast into every rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, model: nn.Module, dist: Distributed) -> None:
    """``state`` as ``optimizer.state_dict()``; under FSDP given on rank 0 only (``{}`` elsewhere) and broadcast."""
    if not dist.fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = param_names(model)
    by_name = {}
    if state:
        by_name = {
            "state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]],
        }
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_optimizer_state_dict(model, optimizer, by_name, options=options)


# ---------------------------------------------------------------------------------------------------- write / read
def write_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    settings: dict[str, Any],
    metadata: dict[str, Any],
    dist: Distributed,
) -> None:
    """The checkpoint of completed ``step`` into folder ``path``; ``settings`` are the training settings as a dict.

    Every rank calls this (FSDP gathers the shards); only rank 0 writes."""
    from safetensors.torch import save_file

    from gaincell.hub import write_model_files

    weights, optimizer_state = full_state(model, optimizer, dist)
    if not dist.main:
        return
    with atomic_dir(path) as tmp:
        write_model_files(model, tmp, metadata=metadata, state_dict=weights)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        streams = {f"gen{i}": g.get_state() for i, g in enumerate(noise_generators(model))}
        if streams:
            save_file(streams, tmp / "noise_state.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": settings}, indent=2))


def checkpoint_step(path: Path) -> int | None:
    """The step checkpointed in folder ``path``, or None when there is no complete checkpoint."""
    try:
        return int(json.loads((path / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def read_checkpoint(path: Path, model: nn.Module, settings: dict[str, Any], device: torch.device, weights: bool) -> int:
    """Noise generators, recorded adaptation targets and (``weights``) the weights into the not yet wrapped model;
    returns the checkpointed step.

    ``settings``: this run's training settings as a dict; those of :data:`RESUME_MUST_MATCH` must equal the saved ones.
    """
    from gaincell.hub import read_targets, read_weights

    state = json.loads((path / "state.json").read_text())
    saved = state["config"]
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != settings[key]:
            raise GaincellError(
                f"cannot resume from {path}: it was written with {key} = {saved.get(key)!r}, now {settings[key]!r} "
                "(use the same settings, or another output folder)"
            )
    if weights:
        model.load_state_dict(read_weights(path))
    read_targets(path, model)  # the EMA adaptation targets recorded so far, which resume where they were
    if (path / "noise_state.safetensors").is_file():
        _restore_noise_streams(path, model, device)
    return int(state["step"])


def _restore_noise_streams(path: Path, model: nn.Module, device: torch.device) -> None:
    from safetensors.torch import load_file

    from gaincell.attention import head_maps, is_converted

    if is_converted(model):  # the streams live where training runs (the model may still be on the CPU)
        for maps in head_maps(model):
            maps.noise_generator(device)
    states = load_file(path / "noise_state.safetensors")
    for i, g in enumerate(noise_generators(model)):
        saved_state = states.get(f"gen{i}")
        if saved_state is None or saved_state.numel() != g.get_state().numel():  # written on another device type
            print(
                f"gaincell: {path} holds noise streams of another device type: layer noise restarts from its seed",
                file=sys.stderr,
            )
            return
        g.set_state(saved_state)


def redo_cut_evaluation(log_path: Path, step: int, evaluate: Callable[[], float] | None, write: bool) -> None:
    """If the log's last record is checkpointed ``step`` marked interrupted, clear the mark and (``evaluate``: the
    evaluation that was scheduled at that step, None when none was) add the validation loss it did not get to."""
    lines = log_path.read_text().splitlines()
    if not lines:
        return
    record = json.loads(lines[-1])
    if record.get("step") != step or not record.pop("interrupted", False):
        return
    if evaluate is not None:
        val_loss = evaluate()
        record.update(val_loss=val_loss, val_ppl=math.exp(val_loss))
    lines[-1] = json.dumps(record)
    if write:
        atomic_write_text(log_path, "".join(line + "\n" for line in lines))
