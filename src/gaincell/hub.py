"""Saving and loading models: a folder with safetensors weights, the HF config, the attention config, a tokenizer.

Folder layout written by :func:`save`::

    config.json         Hugging Face model config
    model.safetensors   weights (tied weights stored once, recorded as aliases in the metadata)
    gaincell.json       attention/hardware config + provenance (role, parent, data, metrics)
    tokenizer.json ...  the tokenizer, when given

:func:`load` accepts a shipped model name (``gaincell models``), such a folder, any local Hugging Face folder, or a
hub id (``gpt2``, ``gpt2-xl``, ...; needs the hub or its local cache).  Loading never unpickles: weights are read with
safetensors, and Hugging Face folders with ``.bin`` weights are refused unless they load with ``weights_only``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaincell.attention import attention_spec, resolve_attention, spec_to_dict
from gaincell.errors import GaincellError
from gaincell.files import atomic_dir
from gaincell.model import convert

__all__ = [
    "TARGETS_FILE",
    "load",
    "load_tokenizer",
    "package_model",
    "read_targets",
    "read_weights",
    "save",
    "shipped_models",
    "zoo_dir",
]

FORMAT = 1
#: per-head EMA statistics recorded while training, the adaptation targets (see gaincell.adapt)
TARGETS_FILE = "targets.safetensors"


def zoo_dir() -> Path:
    """Folder of the reference models shipped inside the package."""
    return Path(__file__).parent / "zoo"


def shipped_models() -> list[dict[str, Any]]:
    """The shipped models' manifest entries (name, role, parent, data, held-out perplexity, ...)."""
    manifest = zoo_dir() / "manifest.json"
    if not manifest.is_file():
        return []
    return json.loads(manifest.read_text())["models"]


def write_model_files(
    model: nn.Module,
    folder: Path,
    *,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write config.json, model.safetensors, gaincell.json (and the tokenizer) into an existing folder.

    ``state_dict``: the weights to write instead of ``model.state_dict()`` (e.g. gathered from FSDP shards)."""
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    owner: dict[str, str] = {}  # tied parameters by identity: gathered copies (FSDP) no longer share storage
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner[name] = first.setdefault(id(p), name)
    for name, t in (state_dict if state_dict is not None else model.state_dict()).items():
        key = (t.data_ptr(), t.storage_offset(), tuple(t.shape))
        source = seen.get(key) or (owner[name] if owner.get(name, name) in tensors else None)
        if source is not None:  # tied weights (e.g. GPT-2's lm_head = wte): store once
            aliases[name] = source
            continue
        seen[key] = name
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt", "aliases": json.dumps(aliases)})
    spec = attention_spec(model)
    info = {"format": FORMAT, "attention": None if spec is None else spec_to_dict(spec), **(metadata or {})}
    (folder / "gaincell.json").write_text(json.dumps(info, indent=2) + "\n")
    targets = {f"{maps.layer}.{name}": t.cpu() for maps in _head_maps_of(model) for name, t in maps.targets.items()}
    if targets:  # the adaptation targets recorded while training (see gaincell.adapt)
        save_file(targets, folder / TARGETS_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _head_maps_of(model: nn.Module) -> list[Any]:
    from gaincell.attention import head_maps, is_converted

    return list(head_maps(model)) if is_converted(model) else []


def read_targets(folder: Path, model: nn.Module) -> bool:
    """Attach the adaptation targets saved in ``folder`` (``targets.safetensors``) to ``model``'s per-head maps;
    False when there are none."""
    from safetensors.torch import load_file

    path = Path(folder) / TARGETS_FILE
    if not path.is_file():
        return False
    saved = load_file(path)
    for maps in _head_maps_of(model):
        maps.targets = {key.split(".", 1)[1]: t for key, t in saved.items() if int(key.split(".", 1)[0]) == maps.layer}
    return True


def save(
    model: nn.Module,
    path: str | Path,
    *,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (converted or not) to the folder ``path`` atomically; ``dtype`` casts floating weights."""
    with atomic_dir(path) as tmp:
        write_model_files(model, tmp, tokenizer=tokenizer, metadata=metadata, dtype=dtype, state_dict=state_dict)
    return Path(path)


def resolve_model_path(name_or_path: str | Path) -> Path | None:
    """The local folder of a shipped name or a path; None for anything else (a hub id)."""
    s = str(name_or_path)
    if s in {m["name"] for m in shipped_models()}:
        return zoo_dir() / s
    p = Path(s).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise GaincellError(f"model path {s!r} is a file: give a model folder, a shipped name or a hub id")
    return None


def read_info(folder: Path) -> dict[str, Any] | None:
    f = folder / "gaincell.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise GaincellError(f"corrupt {f}: {exc}") from None


def load(name_or_path: str | Path, *, attention: Any = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model: a shipped name, a gaincell folder, a Hugging Face folder, or a hub id.

    ``attention`` (a hardware preset/file/config or ``softmax``...) converts the loaded model; for an unconverted
    model this is a direct mapping of its weights onto the hardware.  The model is returned in eval mode.
    """
    folder = resolve_model_path(name_or_path)
    info = read_info(folder) if folder is not None else None
    if folder is not None and info is not None:
        model = _load_gaincell_folder(folder, info)
    else:
        model = _load_hf(str(folder) if folder is not None else str(name_or_path), local=folder is not None)
    if attention is not None:
        convert(model, attention)
    return model.to(device).eval()


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``folder/model.safetensors``, tied weights restored from their aliases."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise GaincellError(f"{folder}: missing weights file model.safetensors")
    try:
        state = load_file(weights)
        with safe_open(weights, "pt") as fh:
            aliases = json.loads((fh.metadata() or {}).get("aliases", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GaincellError(f"{weights}: corrupt weights ({exc})") from None
    for alias, source in aliases.items():
        if source in state:
            state[alias] = state[source]
    return state


def _load_gaincell_folder(folder: Path, info: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if info.get("format") != FORMAT:
        raise GaincellError(f"{folder}: unsupported gaincell.json format {info.get('format')!r} (expected {FORMAT})")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise GaincellError(f"{folder}: cannot read config.json ({exc})") from None
    state = read_weights(folder)
    model = AutoModelForCausalLM.from_config(config)
    if info.get("attention") is not None:
        convert(model, resolve_attention(info["attention"]))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else f"shape of {wrong[:3]}"
        )
        raise GaincellError(f"{folder}: weights do not match config.json ({detail})")
    model.load_state_dict(state)
    read_targets(folder, model)
    return model


def _load_hf(name: str, *, local: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, local_files_only=local, dtype=torch.float32)
    except Exception as exc:
        if local:
            raise GaincellError(f"cannot load the Hugging Face model folder {name!r}: {str(exc).splitlines()[0]}") from None
        shipped = ", ".join(m["name"] for m in shipped_models()) or "none"
        raise GaincellError(
            f"unknown model {name!r}: not a shipped model ({shipped}), not a local folder, and not loadable from the "
            f"Hugging Face hub or its cache ({exc.__class__.__name__})"
        ) from None


def load_tokenizer(name_or_path: str | Path) -> Any:
    """The tokenizer stored with a model; GPT-2's offline BPE for GPT-2 checkpoints that carry none."""
    from transformers import AutoTokenizer

    from gaincell.data import gpt2_tokenizer

    folder = resolve_model_path(name_or_path)
    source = str(folder) if folder is not None else str(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=folder is not None)
        tok.model_max_length = 1 << 30
        return tok
    except Exception:
        pass
    model_type = None
    if folder is not None and (folder / "config.json").is_file():
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type == "gpt2" or str(name_or_path).split("/")[-1].startswith(("gpt2", "distilgpt2")):
        return gpt2_tokenizer()
    raise GaincellError(f"no tokenizer found for model {str(name_or_path)!r}")


def package_model(
    model: nn.Module,
    tokenizer: Any,
    heldout_ids: torch.Tensor,
    *,
    name: str,
    source: Path,
    role: str,
    parent: str | None,
    data: str,
    heldout: str,
    context: int | None = None,
    log: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ship a trained model inside the package (maintainers): evaluate it on the held-out text, save it in fp16 to
    the zoo with its training ``log``, measure again from the fp16 copy (what users will get) and record it in the
    manifest.  Returns the manifest entry plus ``fp32_perplexity`` and ``path``."""
    import shutil

    from gaincell.evaluate import perplexity
    from gaincell.files import atomic_write_text

    ppl = perplexity(model, heldout_ids, context=context, progress=progress)
    dest = zoo_dir() / name
    meta = {
        **(read_info(source) or {}),
        "name": name,
        "role": role,
        "parent": parent,
        "data": data,
        "heldout": {"text": heldout, **ppl},
    }
    meta.pop("format", None)
    meta.pop("attention", None)
    save(model, dest, tokenizer=tokenizer, metadata=meta, dtype=torch.float16)
    shipped = perplexity(load(dest), heldout_ids, context=context)["perplexity"]
    if log is not None and log.is_file():
        shutil.copy(log, dest / "train-log.jsonl")
    entry = {
        "name": name,
        "role": role,
        "parent": parent,
        "data": data,
        "heldout": heldout,
        "perplexity": round(shipped, 3),
        "context": ppl["context"],
        "tokens": ppl["tokens"],
    }
    manifest_path = zoo_dir() / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": []}
    manifest["models"] = [m for m in manifest["models"] if m["name"] != name] + [entry]
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return {**entry, "fp32_perplexity": ppl["perplexity"], "path": str(dest)}
