"""Generation through the simulated analog KV cache, and the retention study.

``gaincell generate`` decodes token by token through :class:`~gaincell.cache.AnalogKVCache` (host tokens/s, simulated
hardware time and energy per token); ``gaincell retention`` sweeps the retention time tau (and idle time between
tokens) for silicon- and IGZO-like cells, with and without refresh, and plots perplexity against tau.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gaincell.config import HardwareConfig
from gaincell.errors import GaincellError

__all__ = ["cache_perplexity", "generate", "retention_study"]

SILICON_TAU = 5e-3  # [S1] silicon gain cells
IGZO_TAU = 5.0  # [S1, S3] oxide-semiconductor cells: ~3 orders of magnitude longer


def _sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, gen: torch.Generator) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[..., 0]


def _hardware_for(model: nn.Module, token_period: float | None) -> HardwareConfig | None:
    from gaincell.attention import attention_spec
    from gaincell.model import convert

    spec = attention_spec(model)
    if not isinstance(spec, HardwareConfig):
        return None
    if token_period is not None:
        if not (token_period > 0 and math.isfinite(token_period)):
            raise GaincellError(f"--token-period must be a positive number of seconds, got {token_period}")
        tau = spec.retention_time
        spec = spec.replace(token_period=token_period, retention_time=None if math.isinf(tau) else tau)
        convert(model, spec)
    return spec


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    token_period: float | None = None,
    idle: float = 0.0,
    refresh_period: float | None = None,
    stream: Any = None,
) -> dict[str, Any]:
    """Decode ``max_new_tokens`` after ``prompt``; analog models decode through an :class:`AnalogKVCache`."""
    from transformers import DynamicCache

    from gaincell.cache import AnalogKVCache
    from gaincell.cost import analog_cost, model_shape_of

    if not prompt:
        raise GaincellError("--prompt is empty: give at least one character of text")
    if max_new_tokens < 1:
        raise GaincellError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise GaincellError("need --temperature >= 0, --top-k >= 1, 0 < --top-p <= 1")
    if not (idle >= 0 and math.isfinite(idle)):
        raise GaincellError(f"--idle must be a finite number of seconds >= 0, got {idle}")
    model.eval()
    hw = _hardware_for(model, token_period)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    if ids.numel() == 0:
        raise GaincellError("the prompt tokenizes to nothing")
    cache: Any
    if hw is not None:
        cache = AnalogKVCache(model, refresh="periodic" if refresh_period else "none", refresh_period=refresh_period)
    else:
        cache = DynamicCache(config=model.config)
    gen = torch.Generator().manual_seed(seed)
    new: list[int] = []
    shown = ""
    t0 = time.perf_counter()
    logits = model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1]
    eos = tokenizer.eos_token_id
    for _ in range(max_new_tokens):
        nxt = _sample(logits.float(), temperature, top_k, top_p, gen)
        new.append(int(nxt))
        if stream is not None:
            text = tokenizer.decode(new)
            stream.write(text[len(shown) :])
            stream.flush()
            shown = text
        if eos is not None and int(nxt) == eos:
            break
        if len(new) == max_new_tokens:
            break
        if hw is not None and idle:
            cache.advance_time(idle)
        logits = model(input_ids=nxt.view(1, 1), cache=cache, use_cache=True).logits[:, -1]
    host = time.perf_counter() - t0
    result: dict[str, Any] = {
        "prompt": prompt,
        "text": tokenizer.decode(new),
        "new_tokens": len(new),
        "host_seconds": host,
        "tokens_per_s": len(new) / host,
    }
    if hw is not None:
        from gaincell.cost import COMPONENTS

        writes = cache.refresh_writes
        result.update(
            hardware=hw.name,
            token_period_s=hw.token_period,
            retention_time_s=hw.retention_time,
            hardware_time_s=cache.time,
            hardware_time_per_token_s=cache.time / max(1, cache.get_seq_length()),
            refresh_writes=writes,
            refresh_energy_j=writes * COMPONENTS["e_write"].value,
        )
        try:
            cost = analog_cost(hw, model_shape_of(model))
            result.update(
                attention_latency_per_token_s=cost["latency_per_token_all_layers_s"],
                energy_per_token_j=cost["energy_per_token_j"],
            )
        except GaincellError as exc:  # the cost model cannot cost this hardware: say so, do not guess
            result.update(attention_latency_per_token_s=None, energy_per_token_j=None, cost_note=str(exc))
    return result


# ---------------------------------------------------------------------------------------------------- retention study
@torch.no_grad()
def cache_perplexity(
    model: nn.Module,
    ids: Tensor,
    *,
    context: int,
    hardware: HardwareConfig,
    idle: float = 0.0,
    refresh_period: float | None = None,
) -> dict[str, Any]:
    """Perplexity when every token is decoded through a fresh analog cache per ``context``-token chunk.

    Chunks are decoded side by side (one batch); ``idle`` seconds pass between consecutive tokens.
    """
    from gaincell.cache import AnalogKVCache
    from gaincell.model import convert

    convert(model, hardware)
    n = ids.numel() // context
    if n < 1:
        raise GaincellError(f"the text has {ids.numel()} tokens, fewer than one context of {context}")
    x = ids[: n * context].view(n, context)
    cache = AnalogKVCache(model, refresh="periodic" if refresh_period else "none", refresh_period=refresh_period)
    nll, count = 0.0, 0
    for t in range(context - 1):
        if t and idle:
            cache.advance_time(idle)
        logits = model(input_ids=x[:, t : t + 1], cache=cache, use_cache=True).logits[:, -1].float()
        nll -= float(torch.log_softmax(logits, -1).gather(-1, x[:, t + 1 : t + 2]).sum())
        count += n
    return {"perplexity": math.exp(nll / count), "tokens": count, "refresh_writes": cache.refresh_writes}


def retention_study(
    model: nn.Module,
    ids: Tensor,
    *,
    context: int,
    taus: list[float],
    idles: list[float],
    refresh_fraction: float = 0.05,
    base: HardwareConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity vs retention time, for each idle time, without refresh and with refresh every ``refresh_fraction * tau``."""
    from gaincell.attention import attention_spec

    base = base or attention_spec(model)
    if not isinstance(base, HardwareConfig):
        raise GaincellError("the retention study needs a model converted to analog hardware")
    if any(not (t > 0 and math.isfinite(t)) for t in taus):
        raise GaincellError(f"retention times must be > 0 seconds, got {taus}")
    if any(not (i >= 0 and math.isfinite(i)) for i in idles):
        raise GaincellError(f"idle times must be >= 0 seconds, got {idles}")
    from gaincell.cost import COMPONENTS

    e_write = COMPONENTS["e_write"].value  # a refresh rewrites a cell through its DAC
    runs = [(tau, idle, refresh) for idle in idles for refresh in (False, True) for tau in taus]
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(runs) + 1, desc="retention", unit="run")
    ideal = cache_perplexity(model, ids, context=context, hardware=base.replace(retention_time=None))
    if bar is not None:
        bar.update(1)
    for tau, idle, refresh in runs:
        hw = base.replace(retention_time=tau)
        res = cache_perplexity(
            model, ids, context=context, hardware=hw, idle=idle, refresh_period=refresh_fraction * tau if refresh else None
        )
        rows.append(
            {
                "retention_time_s": tau,
                "idle_s": idle,
                "refresh": refresh,
                "perplexity": res["perplexity"],
                "refresh_writes": res["refresh_writes"],
                "tokens": res["tokens"],
                "refresh_energy_per_token_j": res["refresh_writes"] * e_write / max(1, res["tokens"]),
            }
        )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "hardware": base.name,
        "token_period_s": base.token_period,
        "context": context,
        "no_leak_perplexity": ideal["perplexity"],
        "refresh_fraction": refresh_fraction,
        "rows": rows,
    }


def _retention_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaincell.files import atomic_write

    fig, ax = plt.subplots(figsize=(8, 5))
    idles = sorted({r["idle_s"] for r in data["rows"]})
    for idle in idles:
        for refresh, style in ((False, "o-"), (True, "s--")):
            rs = [r for r in data["rows"] if r["idle_s"] == idle and r["refresh"] == refresh]
            label = f"idle {idle:g} s between tokens, {'refresh every ' + format(data['refresh_fraction'], 'g') + ' tau' if refresh else 'no refresh'}"
            ax.loglog([r["retention_time_s"] for r in rs], [r["perplexity"] for r in rs], style, label=label)
    ax.axhline(data["no_leak_perplexity"], color="k", lw=0.8, label="no leakage")
    for tau, name in ((SILICON_TAU, "silicon 5 ms"), (IGZO_TAU, "IGZO-like 5 s")):
        ax.axvline(tau, color="grey", ls=":", lw=1)
        ax.text(tau, ax.get_ylim()[1], f" {name}", rotation=90, va="top", fontsize=8)
    ax.set(
        xlabel="retention time tau (s)",
        ylabel="perplexity (decoded through the analog cache)",
        title=f"Retention study (token period {data['token_period_s'] * 1e9:.0f} ns, context {data['context']})",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- CLI
def _cmd_generate(args: argparse.Namespace) -> int:
    from gaincell.hub import load, load_tokenizer

    model = load(args.model, attention=args.hardware)
    tok = load_tokenizer(args.model)
    stream = sys.stdout if args.stream and not args.json else None
    if stream is not None:
        stream.write(args.prompt)
    res = generate(
        model,
        tok,
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
    print(line + "]", file=sys.stderr)
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GaincellError(f"expected comma-separated numbers, got {text!r}") from None


def _cmd_retention(args: argparse.Namespace) -> int:
    from gaincell.data import load_text, tokenize
    from gaincell.files import atomic_write_text
    from gaincell.hub import load, load_tokenizer

    model = load(args.model, attention=args.hardware)
    tok = load_tokenizer(args.model)
    ids = tokenize(tok, load_text(args.text))[: args.tokens]
    from gaincell.evaluate import model_context

    context = min(args.context or model_context(model), model_context(model))
    taus = _floats(args.taus)
    idles = _floats(args.idle)
    data = retention_study(
        model, ids, context=context, taus=taus, idles=idles, refresh_fraction=args.refresh_fraction, progress=not args.quiet
    )
    out = Path(args.out)
    atomic_write_text(out / "retention.json", json.dumps(data, indent=2) + "\n")
    md = [
        "# Retention study",
        "",
        f"Perplexity of {args.model} on {args.text} ({data['rows'][0]['tokens']} tokens), every token "
        f"decoded through the analog KV cache; no leakage: {data['no_leak_perplexity']:.2f}.",
        "",
        "| tau (s) | idle (s) | refresh | perplexity | refresh writes | refresh energy per token |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        energy = f"{r['refresh_energy_per_token_j'] * 1e9:.3g} nJ" if r["refresh_writes"] else "-"
        md.append(
            f"| {r['retention_time_s']:g} | {r['idle_s']:g} | {'yes' if r['refresh'] else 'no'} | {r['perplexity']:.2f} "
            f"| {r['refresh_writes']} | {energy} |"
        )
    md += ["", "![perplexity vs retention time](retention.png)", ""]
    atomic_write_text(out / "retention.md", "\n".join(md))
    _retention_plot(data, out / "retention.png")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(md[:-2]))
        print(f"wrote {out / 'retention.md'}, {out / 'retention.json'}, {out / 'retention.png'}")
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
    p.set_defaults(handler=_cmd_generate)

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
    p.set_defaults(handler=_cmd_retention)
