"""``gaincell generate`` (text through the simulated analog KV cache) and ``gaincell retention`` (perplexity vs tau)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gaincell.errors import GaincellError


def cmd_generate(args: argparse.Namespace) -> int:
    from gaincell.cli.common import load_model
    from gaincell.generation import generate

    model, tokenizer = load_model(args.model, args.hardware)
    stream = sys.stdout if args.stream and not args.json else None
    if stream is not None:
        stream.write(args.prompt)
    res = generate(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        token_period=args.token_period,
        idle=args.idle,
        refresh_period=args.refresh_period,
        stream=stream,
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    if stream is None:
        print(args.prompt + res["text"])
    else:
        print()
    print(generation_summary(res), file=sys.stderr)
    return 0


def generation_summary(res: dict[str, Any]) -> str:
    """One bracketed line: tokens and host speed, and for analog models the simulated time, energy and refresh."""
    line = f"[{res['new_tokens']} tokens, host {res['tokens_per_s']:.1f} tokens/s"
    if "hardware_time_s" in res:
        line += (
            f"; simulated hardware: {res['hardware_time_per_token_s'] * 1e6:.3f} us per token "
            f"({res['hardware_time_s'] * 1e3:.3f} ms in all)"
        )
        if res["energy_per_token_j"] is not None:
            line += (
                f", attention {res['attention_latency_per_token_s'] * 1e9:.0f} ns "
                f"and {res['energy_per_token_j'] * 1e9:.1f} nJ per token"
            )
        else:
            line += f", energy n/a: {res['cost_note']}"
        if res["refresh_writes"]:
            line += f", {res['refresh_writes']} refresh writes ({res['refresh_energy_j'] * 1e9:.1f} nJ)"
    return line + "]"


def float_list(text: str) -> list[float]:
    """Comma-separated numbers, e.g. ``1e-6,1e-3,1``."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GaincellError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_retention(args: argparse.Namespace) -> int:
    from gaincell.cli.common import load_model
    from gaincell.data import load_text, tokenize
    from gaincell.evaluate import model_context
    from gaincell.generation import retention_study, retention_table, write_retention_report

    model, tokenizer = load_model(args.model, args.hardware)
    ids = tokenize(tokenizer, load_text(args.text))[: args.tokens]
    context = min(args.context or model_context(model), model_context(model))
    data = retention_study(
        model,
        ids,
        context=context,
        taus=float_list(args.taus),
        idles=float_list(args.idle),
        refresh_fraction=args.refresh_fraction,
        progress=not args.quiet,
    )
    paths = write_retention_report(data, args.out, model=args.model, text=args.text)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join([*retention_table(data, model=args.model, text=args.text), ""]))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate text through the simulated analog KV cache")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--hardware", default=None, help="convert first (default: as saved)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-period", type=float, default=None, help="seconds per token (keeps tau)")
    p.add_argument("--idle", type=float, default=0.0, help="idle seconds between generated tokens")
    p.add_argument("--refresh-period", type=float, default=None, help="refresh every this many seconds")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("retention", help="perplexity vs retention time (and idle time), with and without refresh")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--hardware", default=None)
    p.add_argument("--tokens", type=int, default=1024, help="use the first N tokens of the text")
    p.add_argument("--context", type=int, default=None, help="tokens per decoded chunk (default: the model's positions)")
    p.add_argument("--taus", default="1e-6,1e-5,1e-4,1e-3,5e-3,1e-2,1e-1,1,5,100", help="retention times (s)")
    p.add_argument("--idle", default="0,1e-3", help="idle times between tokens (s)")
    p.add_argument("--refresh-fraction", type=float, default=0.05, help="refresh period as a fraction of tau")
    p.add_argument("--out", default="gaincell-out/retention")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_retention)
