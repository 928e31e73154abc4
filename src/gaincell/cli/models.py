"""Model commands: ``init``, ``finetune``, ``adapt``, ``eval``, ``models``, ``package``, ``prepare``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import torch

from gaincell.cli.common import load_model, print_result
from gaincell.data import text_token_ids
from gaincell.errors import GaincellError


# ---------------------------------------------------------------------------------------------------- init
def cmd_init(args: argparse.Namespace) -> int:
    from gaincell.data import gpt2_tokenizer, load_text, subvocab_tokenizer
    from gaincell.factory import new_model
    from gaincell.hub import save

    tok = gpt2_tokenizer() if args.vocab == "gpt2" else subvocab_tokenizer(load_text(args.vocab))
    model = new_model(
        args.arch,
        layers=args.layers,
        width=args.width,
        heads=args.heads,
        kv_heads=args.kv_heads,
        context=args.context,
        vocab=len(tok),
        seed=args.seed,
    )
    n = sum(p.numel() for p in model.parameters())
    save(model, args.out, tokenizer=tok, metadata={"role": "init", "vocab_from": args.vocab, "seed": args.seed})
    print(f"wrote {args.out}: {args.arch}, {n / 1e6:.2f}M parameters, vocabulary {len(tok)}, context {args.context}")
    return 0


# ---------------------------------------------------------------------------------------------------- finetune
def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field of the dataclass ``cls``, with its type, help (field metadata "help") and the default
    shown, all taken from the dataclass itself, so every default exists in one place.  A flag that is not given is
    left out of the namespace (so a settings file can fill it, see :func:`train_config_from`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=f"{help_text} (default: {f.default})"
            )
            continue
        scalar = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
        shown = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(flag, type=scalar, default=argparse.SUPPRESS, choices=choices, help=help_text + shown)


def train_config_from(args: argparse.Namespace) -> Any:
    """The run's settings: the dataclass defaults, then the ``--config`` file, then the flags given."""
    from gaincell.training_config import TrainConfig

    values = dataclasses.asdict(TrainConfig.load(args.config)) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)})
    return TrainConfig.from_dict(values, source="the finetune settings")


def cmd_finetune(args: argparse.Namespace) -> int:
    from gaincell.train import finetune, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = train_config_from(args)
    # FSDP: the full model stays on the CPU; each rank moves only its shards to the device
    model, tok = load_model(args.model, args.hardware, "cpu" if cfg.fsdp else args.device)
    teacher = load_model(args.teacher, device=args.device)[0] if args.teacher else None
    summary = finetune(
        model,
        text_token_ids(args.train, tok),
        text_token_ids(args.val, tok) if args.val else None,
        cfg,
        args.out,
        teacher=teacher,
        tokenizer=tok,
        metadata={"role": args.role, "parent": args.model, "data": args.train, "hardware": args.hardware},
        resume=not args.no_resume,
        progress=not args.quiet,
        stop_after=args.stop_after_steps,
        device=device,
    )
    return report_finetune(summary, cfg, Path(args.out))


def report_finetune(summary: dict[str, Any], cfg: Any, out: Path) -> int:
    """Print how the run ended (under torchrun, rank 0 reports) and choose the exit status."""
    rank = int(os.environ.get("RANK", "0"))
    checkpoint = out / "checkpoint"
    if "stopped_by" in summary:  # SIGTERM or Ctrl-C: the step in progress finished and its checkpoint is written
        if rank == 0:
            print(
                f"gaincell: stopped by {summary['stopped_by']} after step {summary['stopped_at']}: checkpoint in "
                f"{checkpoint}; run the same command again to resume",
                file=sys.stderr,
            )
        return 130 if summary["stopped_by"] == "SIGINT" else 143  # 128 + the signal, as if it had ended the process
    if rank != 0:
        return 0
    if "stopped_at" in summary:
        print(f"stopped after step {summary['stopped_at']}: checkpoint in {checkpoint}; run again to resume")
        return 0
    final = summary["final"]
    line = f"done: {cfg.steps} steps, loss {final['loss']:.4f}"
    if "val_ppl" in final:
        line += f", validation perplexity {final['val_ppl']:.2f}"
    print(f"{line}; model in {out / 'model'}")
    return 0


# ---------------------------------------------------------------------------------------------------- adapt
def cmd_adapt(args: argparse.Namespace) -> int:
    from gaincell.adapt import adapt
    from gaincell.distributed import Distributed
    from gaincell.hub import save
    from gaincell.train import sample_batch

    model, tok = load_model(args.model)
    batch, _ = sample_batch(text_token_ids(args.calib, tok), args.calib_batch, args.calib_context, args.seed)
    eval_ids = text_token_ids(args.eval, tok) if args.eval else None
    report: dict[str, Any] = {"model": args.model, "hardware": args.hardware}
    if eval_ids is not None:
        report.update(_perplexities_before_adapting(model, eval_ids, args))
    settings = {"tol": args.tol, "max_iter": args.max_iter, "alpha_min": args.alpha_min, "anneal": args.anneal}
    settings.update(reset_maps=args.reset_maps, target_source=args.targets)
    report["reset_maps"] = args.reset_maps
    result = adapt(model, args.hardware, batch, progress=not args.quiet, **settings)
    dist = Distributed()
    if dist.enabled:  # every rank adapted the same batch; rank 0's maps are the reference
        _broadcast_head_maps(model)
        if not dist.main:
            return 0
    report["adaptation"] = result.to_dict()
    if eval_ids is not None:
        report["after_perplexity"] = _perplexity(model, eval_ids, args)
    if args.out:
        meta = {"role": "nonlinear-adapted", "parent": args.model, "data": args.calib, "adaptation": report}
        save(model, args.out, tokenizer=tok, metadata=meta)
    print_result(report, args.json, _adapt_lines(report, result, args.out))
    return 0


def _perplexity(model: Any, ids: torch.Tensor, args: argparse.Namespace) -> float:
    from gaincell.evaluate import perplexity

    return perplexity(model, ids, context=args.calib_context, progress=not args.quiet)["perplexity"]


def _perplexities_before_adapting(model: Any, ids: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """The linear model as loaded, and its weights straight on the target hardware (on a copy: the model is kept)."""
    import copy

    from gaincell.model import convert

    unadapted = convert(copy.deepcopy(model), args.hardware)
    if args.reset_maps:  # what the adaptation starts from
        from gaincell.adapt import reset_head_maps

        reset_head_maps(unadapted)
    return {"linear_perplexity": _perplexity(model, ids, args), "before_perplexity": _perplexity(unadapted, ids, args)}


def _broadcast_head_maps(model: Any) -> None:
    from gaincell.attention import head_maps

    for maps in head_maps(model):
        for p in maps.parameters():
            torch.distributed.broadcast(p.data, src=0)


def _adapt_lines(report: dict[str, Any], result: Any, out: str | None) -> list[str]:
    lines = [
        f"adaptation: {result.iterations} iterations, {'converged' if result.converged else 'not converged'} "
        f"(targets: {result.target_source})",
        f"calibration loss {result.loss[0]:.3f} -> {result.loss[-1]:.3f}",
    ]
    labels = {
        "linear_perplexity": "linear model",
        "before_perplexity": "before adaptation",
        "after_perplexity": "after adaptation",
    }
    lines += [f"{label:>18}: perplexity {report[key]:.2f}" for key, label in labels.items() if key in report]
    if out:
        lines.append(f"adapted model in {out}")
    return lines


# ---------------------------------------------------------------------------------------------------- eval, models
def cmd_eval(args: argparse.Namespace) -> int:
    from gaincell.attention import attention_spec
    from gaincell.evaluate import perplexity

    model, tok = load_model(args.model, args.hardware, args.device)
    ids = text_token_ids(args.text, tok)
    if args.max_tokens is not None:
        if args.max_tokens < 1:
            raise GaincellError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        ids = ids.flatten()[: args.max_tokens]
    res = perplexity(model, ids, context=args.context, stride=args.stride, batch_size=args.batch_size, progress=not args.quiet)
    spec = attention_spec(model)
    res.update(model=args.model, text=args.text, attention=None if spec is None else getattr(spec, "name", str(spec)))
    line = (
        f"perplexity {res['perplexity']:.3f} over {res['tokens']} tokens "
        f"(context {res['context']}, stride {res['stride']}, attention {res['attention'] or 'native'})"
    )
    print_result(res, args.json, [line])
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from gaincell.hub import shipped_models

    if args.families:
        return print_families(args.json)
    models = shipped_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no shipped models (run `make models`)")
        return 0
    print(f"{'name':<24} {'role':<10} {'parent':<22} {'held-out ppl':>12}  data")
    for m in models:
        print(f"{m['name']:<24} {m['role']:<10} {m['parent'] or '-':<22} {m['perplexity']:>12.2f}  {m['data']}")
    return 0


def print_families(as_json: bool) -> int:
    """The model families that convert (with their quirks and what is tested for each) and what is refused."""
    from dataclasses import asdict

    from gaincell.families import FAMILIES, REFUSED, TESTED

    if as_json:
        rows = [{**asdict(f), "converts": True, "cache": True, "tested": list(TESTED)} for f in FAMILIES.values()]
        print(json.dumps({"families": rows, "refused": REFUSED}, indent=2))
        return 0
    print(f"{'family':<24} {'model_type':<12} {'example':<34} quirks")
    for f in FAMILIES.values():
        print(f"{f.name:<24} {f.model_type:<12} {f.example:<34} {f.quirks}")
    print("\nevery family above converts, decodes through the analog KV cache and is tested for:")
    print("\n".join(f"  - {t}" for t in TESTED))
    print("\nother architectures:")
    print("\n".join(f"  {kind:<50} {what}" for kind, what in REFUSED.items()))
    return 0


# ---------------------------------------------------------------------------------------------------- package, prepare
def cmd_package(args: argparse.Namespace) -> int:
    from gaincell.hub import package_model

    model, tok = load_model(args.model)
    entry = package_model(
        model,
        tok,
        text_token_ids(args.heldout, tok),
        name=args.name,
        source=Path(args.model),
        role=args.role,
        parent=args.parent,
        data=args.data,
        heldout=args.heldout,
        context=args.context,
        log=Path(args.log) if args.log else None,
        progress=not args.quiet,
    )
    print(
        f"packaged {args.name}: held-out perplexity {entry['perplexity']:.2f} (fp32 {entry['fp32_perplexity']:.2f}) "
        f"-> {entry['path']}"
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from gaincell.data import prepare_tokens
    from gaincell.hub import load_tokenizer

    meta = prepare_tokens(args.text, load_tokenizer(args.tokenizer), args.out, progress=not args.quiet, max_docs=args.max_docs)
    print(f"wrote {args.out}: {meta['tokens']:,} tokens from {meta['documents']:,} documents ({meta['dtype']})")
    return 0


# ---------------------------------------------------------------------------------------------------- flags
def register(sub: Any) -> None:
    _register_init(sub)
    _register_finetune(sub)
    _register_adapt(sub)
    _register_eval_and_models(sub)
    _register_package_and_prepare(sub)


def _register_init(sub: Any) -> None:
    from gaincell.factory import ARCHITECTURES

    p = sub.add_parser("init", help="create a randomly initialised GPT-2/Llama model folder with its tokenizer")
    p.add_argument("--arch", default="gpt2", choices=list(ARCHITECTURES))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="Llama: key/value heads (grouped-query attention)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--vocab", default="shakespeare:train", help="'gpt2' or a text spec for a closed GPT-2 sub-vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_init)


def _register_finetune(sub: Any) -> None:
    from gaincell.train import TrainConfig

    p = sub.add_parser("finetune", help="hardware-aware fine-tuning (or pre-training with --hardware softmax)")
    p.add_argument("--model", required=True, help="shipped name, model folder or hub id")
    p.add_argument(
        "--hardware", default=None, help="preset/file/softmax/hardsigmoid/sigmoid to convert to first (default: as saved)"
    )
    p.add_argument("--train", default="shakespeare:train", help="training text spec")
    p.add_argument("--val", default="shakespeare:validation", help="validation text spec ('' for none)")
    p.add_argument("--out", required=True)
    p.add_argument("--teacher", default=None, help="distil from this (unconverted) model (see --distill-weight)")
    p.add_argument("--role", default="finetuned", help="recorded in gaincell.json")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")
    p.add_argument("--stop-after-steps", type=int, default=None, help="checkpoint and exit after N steps (resume later)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="training settings from a YAML/JSON file (e.g. recipes/gpt2-paper-linear.yaml); flags given override it",
    )
    add_dataclass_flags(p.add_argument_group("training settings (gaincell.train.TrainConfig)"), TrainConfig)  # type: ignore[arg-type]
    p.set_defaults(handler=cmd_finetune)


def _register_adapt(sub: Any) -> None:
    p = sub.add_parser("adapt", help="the paper's adaptation algorithm: linear-hardware model -> nonlinear hardware")
    p.add_argument("--model", required=True, help="a model converted to the linear hardware")
    p.add_argument("--hardware", default="paper", help="target hardware (default: paper)")
    p.add_argument("--calib", default="shakespeare:train", help="calibration text spec")
    p.add_argument("--calib-batch", type=int, default=16)
    p.add_argument("--calib-context", type=int, default=128)
    p.add_argument("--eval", default="shakespeare:validation", help="text for before/after perplexity ('' to skip)")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--alpha-min", type=float, default=0.1)
    p.add_argument("--anneal", type=int, default=50)
    p.add_argument(
        "--targets",
        default="auto",
        choices=["auto", "recorded", "batch"],
        help="adaptation targets: recorded while the linear model was fine-tuned (saved with it), measured on the "
        "calibration batch, or auto (recorded when present)",
    )
    p.add_argument(
        "--reset-maps",
        action="store_true",
        help="start from a = 1, b = 0 for every per-head map (the arXiv-era variant) instead of the trained maps",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the adapted model here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_adapt)


def _register_eval_and_models(sub: Any) -> None:
    p = sub.add_parser("eval", help="strided perplexity of a model on a text")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--hardware",
        default=None,
        help="paper|paper-linear|igzo|softmax|hardsigmoid|sigmoid[:W]|FILE (unconverted model: direct mapping)",
    )
    p.add_argument("--text", required=True, help="file, folder, shakespeare:test, hf:NAME:SPLIT")
    p.add_argument("--context", type=int, default=None, help="default: the model's positions")
    p.add_argument("--stride", type=int, default=None, help="default: the context")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate the first N tokens of the text only")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("models", help="list the shipped reference models (or, with --families, the model families)")
    p.add_argument("--families", action="store_true", help="the model families that convert, their quirks, what is tested")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models)


def _register_package_and_prepare(sub: Any) -> None:
    p = sub.add_parser("package", help="(maintainers) evaluate a trained model and ship it in the package (fp16)")
    p.add_argument("--model", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=["softmax", "linear", "nonlinear"])
    p.add_argument("--parent", default=None)
    p.add_argument("--data", default="shakespeare:train")
    p.add_argument("--heldout", default="shakespeare:test")
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--log", default=None, help="training log to ship beside the weights")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_package)

    p = sub.add_parser("prepare", help="tokenize a corpus (file, folder, hf:NAME:SPLIT streamed) into a token file")
    p.add_argument("--text", required=True)
    p.add_argument("--tokenizer", default="gpt2", help="a model (name/folder/hub id) whose tokenizer to use")
    p.add_argument("--out", required=True, help="output .bin (memory-mapped by finetune/eval)")
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_prepare)
