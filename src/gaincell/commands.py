"""Model-level subcommands: init, finetune, adapt, eval, models, package."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from gaincell.errors import GaincellError


def _text_ids(spec: str, tokenizer: Any) -> torch.Tensor:
    from gaincell.data import load_text, load_tokens, tokenize

    if spec.endswith(".bin"):  # a token file from `gaincell prepare` (memory-mapped)
        ids = load_tokens(spec)
        if len(tokenizer) > 0 and ids.numel() and int(ids[: min(ids.numel(), 1 << 20)].max()) >= len(tokenizer):
            raise GaincellError(
                f"{spec} holds token ids beyond this model's vocabulary ({len(tokenizer)}): prepared with another tokenizer?"
            )
        return ids
    ids = tokenize(tokenizer, load_text(spec))
    if ids.numel() == 0:
        raise GaincellError(f"text {spec!r} has no tokens")
    return ids


def _load(model: str, hardware: str | None = None, device: str = "cpu") -> tuple[Any, Any]:
    from gaincell.hub import load, load_tokenizer
    from gaincell.train import resolve_device

    return load(model, attention=hardware, device=resolve_device(device)), load_tokenizer(model)


def _print(obj: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    print(json.dumps(obj, indent=2) if as_json else "\n".join(lines))


# ---------------------------------------------------------------------------------------------------- init
def new_model(arch: str, *, layers: int, width: int, heads: int, kv_heads: int | None, context: int, vocab: int, seed: int):
    """A randomly initialised GPT-2 or Llama causal LM (dropout off)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if width % heads:
        raise GaincellError(f"--width {width} must be divisible by --heads {heads}")
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(
            n_layer=layers,
            n_embd=width,
            n_head=heads,
            n_positions=context,
            vocab_size=vocab,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=vocab - 1,
            eos_token_id=vocab - 1,
        )
        return GPT2LMHeadModel(cfg)
    if arch == "llama":
        kv = kv_heads or heads
        if heads % kv:
            raise GaincellError(f"--heads {heads} must be divisible by --kv-heads {kv}")
        cfg = LlamaConfig(
            num_hidden_layers=layers,
            hidden_size=width,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            intermediate_size=4 * width,
            max_position_embeddings=context,
            vocab_size=vocab,
            tie_word_embeddings=True,
            bos_token_id=vocab - 1,
            eos_token_id=vocab - 1,
        )
        return LlamaForCausalLM(cfg)
    raise GaincellError(f"unknown --arch {arch!r}: choose gpt2 or llama")


def _cmd_init(args: argparse.Namespace) -> int:
    from gaincell.data import gpt2_tokenizer, load_text, subvocab_tokenizer
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
def _cmd_finetune(args: argparse.Namespace) -> int:
    from gaincell.train import TrainConfig, finetune, resolve_device

    torch.set_num_threads(args.threads) if args.threads else None
    device = resolve_device(args.device)
    # FSDP: the full model stays on the CPU; each rank moves only its shards to the device
    model, tok = _load(args.model, args.hardware, "cpu" if args.fsdp else args.device)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        context=args.context,
        grad_accum=args.grad_accum,
        lr=args.lr,
        min_lr=args.min_lr if args.min_lr is not None else args.lr / 10,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        save_every=args.save_every,
        seed=args.seed,
        distill_weight=args.distill_weight if args.teacher else 0.0,
        distill_temperature=args.distill_temperature,
        precision=args.precision,
        lr_decay_steps=args.lr_decay_steps,
        fsdp=args.fsdp,
        compile=args.compile,
    )
    teacher = _load(args.teacher, device=args.device)[0] if args.teacher else None
    train_ids = _text_ids(args.train, tok)
    val_ids = _text_ids(args.val, tok) if args.val else None
    meta = {"role": args.role, "parent": args.model, "data": args.train, "hardware": args.hardware}
    summary = finetune(
        model,
        train_ids,
        val_ids,
        cfg,
        args.out,
        teacher=teacher,
        tokenizer=tok,
        metadata=meta,
        resume=not args.no_resume,
        progress=not args.quiet,
        stop_after=args.stop_after_steps,
        device=device,
    )
    rank = int(os.environ.get("RANK", "0"))
    if "stopped_by" in summary:  # SIGTERM or Ctrl-C: the step in progress finished and its checkpoint is written
        if rank == 0:
            print(
                f"gaincell: stopped by {summary['stopped_by']} after step {summary['stopped_at']}: checkpoint in "
                f"{Path(args.out) / 'checkpoint'}; run the same command again to resume",
                file=sys.stderr,
            )
        return 130 if summary["stopped_by"] == "SIGINT" else 143  # 128 + the signal, as if it had ended the process
    if rank != 0:  # under torchrun, rank 0 reports
        return 0
    if "stopped_at" in summary:
        print(f"stopped after step {summary['stopped_at']}: checkpoint in {Path(args.out) / 'checkpoint'}; run again to resume")
        return 0
    final = summary["final"]
    line = f"done: {cfg.steps} steps, loss {final['loss']:.4f}"
    if "val_ppl" in final:
        line += f", validation perplexity {final['val_ppl']:.2f}"
    print(f"{line}; model in {Path(args.out) / 'model'}")
    return 0


# ---------------------------------------------------------------------------------------------------- adapt
def _cmd_adapt(args: argparse.Namespace) -> int:
    from gaincell.adapt import adapt
    from gaincell.evaluate import perplexity
    from gaincell.hub import save
    from gaincell.train import sample_batch

    model, tok = _load(args.model)
    calib_ids = _text_ids(args.calib, tok)
    batch, _ = sample_batch(calib_ids, args.calib_batch, args.calib_context, args.seed)
    eval_ids = _text_ids(args.eval, tok) if args.eval else None
    report: dict[str, Any] = {"model": args.model, "hardware": args.hardware}
    if eval_ids is not None:
        report["linear_perplexity"] = perplexity(model, eval_ids, context=args.calib_context, progress=not args.quiet)[
            "perplexity"
        ]
    from gaincell.adapt import head_statistics
    from gaincell.model import convert

    targets, _ = head_statistics(model, batch)
    if eval_ids is not None:  # the linear weights straight on the target hardware, before adapting
        import copy

        unadapted = convert(copy.deepcopy(model), args.hardware)
        report["before_perplexity"] = perplexity(unadapted, eval_ids, context=args.calib_context, progress=not args.quiet)[
            "perplexity"
        ]
        del unadapted
    result = adapt(
        model,
        args.hardware,
        batch,
        targets=targets,
        tol=args.tol,
        max_iter=args.max_iter,
        alpha_min=args.alpha_min,
        anneal=args.anneal,
        progress=not args.quiet,
    )
    from gaincell.train import _Dist

    dist = _Dist()
    if dist.enabled:  # every rank adapted the same batch; rank 0's maps are the reference, broadcast to all
        from gaincell.attention import head_maps

        for maps in head_maps(model):
            for p in maps.parameters():
                torch.distributed.broadcast(p.data, src=0)
        if not dist.main:
            return 0
    report["adaptation"] = result.to_dict()
    if eval_ids is not None:
        report["after_perplexity"] = perplexity(model, eval_ids, context=args.calib_context, progress=not args.quiet)[
            "perplexity"
        ]
    if args.out:
        meta = {"role": "nonlinear-adapted", "parent": args.model, "data": args.calib, "adaptation": report}
        save(model, args.out, tokenizer=tok, metadata=meta)
    lines = [f"adaptation: {result.iterations} iterations, {'converged' if result.converged else 'not converged'}"]
    lines.append(f"calibration loss {result.loss[0]:.3f} -> {result.loss[-1]:.3f}")
    for key, label in (
        ("linear_perplexity", "linear model"),
        ("before_perplexity", "before adaptation"),
        ("after_perplexity", "after adaptation"),
    ):
        if key in report:
            lines.append(f"{label:>18}: perplexity {report[key]:.2f}")
    if args.out:
        lines.append(f"adapted model in {args.out}")
    _print(report, args.json, lines)
    return 0


# ---------------------------------------------------------------------------------------------------- eval
def _cmd_eval(args: argparse.Namespace) -> int:
    from gaincell.attention import attention_spec
    from gaincell.evaluate import perplexity

    model, tok = _load(args.model, args.hardware, args.device)
    ids = _text_ids(args.text, tok)
    res = perplexity(model, ids, context=args.context, stride=args.stride, batch_size=args.batch_size, progress=not args.quiet)
    spec = attention_spec(model)
    res.update(model=args.model, text=args.text, attention=None if spec is None else getattr(spec, "name", str(spec)))
    _print(
        res,
        args.json,
        [
            f"perplexity {res['perplexity']:.3f} over {res['tokens']} tokens "
            f"(context {res['context']}, stride {res['stride']}, attention {res['attention'] or 'native'})"
        ],
    )
    return 0


# ---------------------------------------------------------------------------------------------------- models
def _cmd_models(args: argparse.Namespace) -> int:
    from gaincell.hub import shipped_models

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


def _cmd_package(args: argparse.Namespace) -> int:
    """Evaluate a trained model on the held-out text and add it to the shipped zoo (fp16) with its log."""
    import shutil

    from gaincell.evaluate import perplexity
    from gaincell.files import atomic_write_text
    from gaincell.hub import load, read_info, save, zoo_dir

    model, tok = _load(args.model)
    ids = _text_ids(args.heldout, tok)
    ppl = perplexity(model, ids, context=args.context, progress=not args.quiet)
    dest = zoo_dir() / args.name
    info = read_info(Path(args.model)) or {}
    meta = {
        **info,
        "name": args.name,
        "role": args.role,
        "parent": args.parent,
        "data": args.data,
        "heldout": {"text": args.heldout, **ppl},
    }
    meta.pop("format", None)
    meta.pop("attention", None)
    save(model, dest, tokenizer=tok, metadata=meta, dtype=torch.float16)
    check = perplexity(load(dest), ids, context=args.context)["perplexity"]  # what users will get, from fp16
    if args.log and Path(args.log).is_file():
        shutil.copy(args.log, dest / "train-log.jsonl")
    manifest_path = zoo_dir() / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": []}
    entry = {
        "name": args.name,
        "role": args.role,
        "parent": args.parent,
        "data": args.data,
        "heldout": args.heldout,
        "perplexity": round(check, 3),
        "context": ppl["context"],
        "tokens": ppl["tokens"],
    }
    manifest["models"] = [m for m in manifest["models"] if m["name"] != args.name] + [entry]
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    print(f"packaged {args.name}: held-out perplexity {check:.2f} (fp32 {ppl['perplexity']:.2f}) -> {dest}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from gaincell.data import prepare_tokens
    from gaincell.hub import load_tokenizer

    meta = prepare_tokens(args.text, load_tokenizer(args.tokenizer), args.out, progress=not args.quiet, max_docs=args.max_docs)
    print(f"wrote {args.out}: {meta['tokens']:,} tokens from {meta['documents']:,} documents ({meta['dtype']})")
    return 0


# ---------------------------------------------------------------------------------------------------- registration
def register(sub: Any) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus (file, folder, hf:NAME:SPLIT streamed) into a token file")
    p.add_argument("--text", required=True)
    p.add_argument("--tokenizer", default="gpt2", help="a model (name/folder/hub id) whose tokenizer to use")
    p.add_argument("--out", required=True, help="output .bin (memory-mapped by finetune/eval)")
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_cmd_prepare)
    register_cost(sub)
    p = sub.add_parser("init", help="create a randomly initialised GPT-2/Llama model folder with its tokenizer")
    p.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="Llama: key/value heads (grouped-query attention)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--vocab", default="shakespeare:train", help="'gpt2' or a text spec for a closed GPT-2 sub-vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_cmd_init)

    p = sub.add_parser("finetune", help="hardware-aware fine-tuning (or pre-training with --hardware softmax)")
    p.add_argument("--model", required=True, help="shipped name, model folder or hub id")
    p.add_argument("--hardware", default=None, help="preset/file/softmax to convert to first (default: as saved)")
    p.add_argument("--train", default="shakespeare:train", help="training text spec")
    p.add_argument("--val", default="shakespeare:validation", help="validation text spec ('' for none)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--min-lr", type=float, default=None, help="default: lr / 10")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr-decay-steps", type=int, default=None, help="cosine length (default: --steps)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--teacher", default=None, help="distil from this (unconverted) model")
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--distill-temperature", type=float, default=1.0)
    p.add_argument("--role", default="finetuned", help="recorded in gaincell.json")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")
    p.add_argument("--stop-after-steps", type=int, default=None, help="checkpoint and exit after N steps (resume later)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="autocast for the digital layers (the analog arrays are always simulated in float32)",
    )
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP, "
        "for models that do not fit one device",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the digital layers (attention stays eager); pays off on GPUs, see benchmarks/RESULTS.md",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_cmd_finetune)

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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the adapted model here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_cmd_adapt)

    p = sub.add_parser("eval", help="strided perplexity of a model on a text")
    p.add_argument("--model", required=True)
    p.add_argument("--hardware", default=None, help="paper|paper-linear|softmax|FILE (unconverted model: direct mapping)")
    p.add_argument("--text", required=True, help="file, folder, shakespeare:test, hf:NAME:SPLIT")
    p.add_argument("--context", type=int, default=None, help="default: the model's positions")
    p.add_argument("--stride", type=int, default=None, help="default: the context")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("models", help="list the shipped reference models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_models)

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
    p.set_defaults(handler=_cmd_package)


# ---------------------------------------------------------------------------------------------------- cost
def _cmd_cost(args: argparse.Namespace) -> int:
    from gaincell.config import HardwareConfig
    from gaincell.cost import GPU_SPECS, compare, model_shape, write_report

    hw = HardwareConfig.resolve(args.hardware)
    shape = model_shape(args.model)
    if args.gpu and args.gpu.lower() not in GPU_SPECS:
        raise GaincellError(f"unknown GPU {args.gpu!r}: choose one of {', '.join(GPU_SPECS)}")
    if args.window is not None and args.window < 1:
        raise GaincellError(f"--window must be >= 1, got {args.window}")
    if args.window is not None and args.window % hw.array_size and args.window > hw.array_size:
        raise GaincellError(f"--window {args.window} is not a whole number of {hw.array_size}-token arrays")
    res = compare(hw, shape, window=args.window, batch=args.batch, gpus=[args.gpu] if args.gpu else None)
    if args.plots:
        write_report(hw, args.plots, batch=args.batch)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    e_h, e_l, e_t = res["energy_per_token_per_head_j"], res["energy_per_token_per_layer_j"], res["energy_per_token_j"]
    lines = [
        f"gain-cell attention, hardware {res['hardware']}, model {res['model']} ({res['layers']} layers x "
        f"{res['heads']} heads, d = {res['head_dim']}), window {res['window']} ({res['tiles_per_head']} tiles per head)",
        f"  energy per token:  {e_h * 1e9:.2f} nJ per head, {e_l * 1e9:.1f} nJ per layer, {e_t * 1e6:.3f} uJ all layers",
        f"  latency per token: {res['latency_per_token_s'] * 1e9:.0f} ns per layer (all heads in parallel), "
        f"{res['latency_per_token_all_layers_s'] * 1e6:.2f} us all layers",
        f"  area:              {res['area_per_head_mm2']:.3f} mm^2 per head, {res['area_mm2']:.1f} mm^2 all layers",
        "  breakdown per head: " + ", ".join(f"{k} {v * 1e12:.0f} pJ" for k, v in res["energy_breakdown_per_head_j"].items()),
        f"against GPUs (one layer, batch {res['batch']}, per token):",
    ]
    for name, g in res["gpus"].items():
        paper = f"  (paper: x{g['paper']['speedup']:,} / x{g['paper']['energy_ratio']:,})" if "paper" in g else ""
        kind = "measured" if g["kind"] == "measured" else f"roofline, {g['bound']}-bound"
        lines.append(
            f"  {name:<22} {g['latency_s'] * 1e6:10.3f} us {g['energy_j'] * 1e3:10.4f} mJ   "
            f"speed-up x{g['speedup']:,.0f}  energy x{g['energy_ratio']:,.0f}  [{kind}]{paper}"
        )
    if any(g["kind"] == "measured" for g in res["gpus"].values()):
        lines.append("  note: " + next(g["caveat"] for g in res["gpus"].values() if g["kind"] == "measured"))
    if args.plots:
        lines.append(f"wrote {args.plots}/cost.png, cost.json, cost-by-window.csv, cost-by-model.csv")
    print("\n".join(lines))
    return 0


def _cmd_bench_gpu(args: argparse.Namespace) -> int:
    from gaincell.cost import bench_gpu

    res = bench_gpu(batch=args.batch, window=args.window, steps=args.steps, repeats=args.repeats)
    if res is None:
        print("no CUDA GPU on this machine: nothing measured")
        return 0
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    energy = "n/a (no NVML)" if res["energy_j"] is None else f"{res['energy_j'] * 1e3:.4f} mJ"
    print(
        f"{res['gpu']}: {res['latency_s'] * 1e6:.3f} us and {energy} per token "
        f"({res['heads']} heads, d {res['head_dim']}, window {res['window']}, batch {res['batch']})"
    )
    return 0


def register_cost(sub: Any) -> None:
    p = sub.add_parser("cost", help="energy, latency and area of the gain-cell engine vs GPUs")
    p.add_argument("--hardware", default="paper")
    p.add_argument("--model", default="gpt2", help="gpt2[-medium|-large|-xl], llama-7b, a shipped model, HF folder or hub id")
    p.add_argument("--window", type=int, default=None, help="default: the hardware window")
    p.add_argument("--batch", type=int, default=64, help="GPU batch (the paper measured 64)")
    p.add_argument("--gpu", default=None, help="only this GPU roofline (h100, h200, a100, rtx4090, jetson-nano)")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write sweeps and the breakdown (PNG, CSV, JSON)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_cost)
    p = sub.add_parser("bench-gpu", help="measure decode attention latency/energy on the local CUDA GPU (NVML)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_bench_gpu)
