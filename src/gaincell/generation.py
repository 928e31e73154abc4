"""Text generation through the simulated analog KV cache, and the retention study.

:func:`generate` decodes with transformers' own ``model.generate()``, handing it an
:class:`~gaincell.cache.AnalogKVCache` as the cache: it reports host tokens/s next to the simulated hardware time and
energy per token.  :func:`retention_study` sweeps the cells' retention time tau (and the idle time between tokens),
without and with refresh, and :func:`write_retention_report` writes its table, data and perplexity-vs-tau plot.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from gaincell.attention import attention_spec, head_maps, is_converted
from gaincell.cache import AnalogKVCache
from gaincell.config import HardwareConfig
from gaincell.cost import COMPONENTS, analog_cost, model_shape_of
from gaincell.errors import GaincellError
from gaincell.noise import make_generator

__all__ = [
    "IGZO_TAU",
    "SILICON_TAU",
    "IdleBetweenTokens",
    "TextStreamWriter",
    "cache_perplexity",
    "decode_hardware",
    "generate",
    "retention_study",
    "retention_table",
    "write_retention_report",
]

# The two cell technologies the retention plot marks, read from their presets (the presets cite the sources).
SILICON_TAU = HardwareConfig.preset("paper").retention_time  # silicon gain cells, ~5 ms
IGZO_TAU = HardwareConfig.preset("igzo").retention_time  # oxide-semiconductor (IGZO-like) cells, ~5 s


# ---------------------------------------------------------------------------------------------------- generation
class TextStreamWriter(BaseStreamer):
    """A ``generate()`` streamer that writes the new text to ``stream`` as each token arrives (the prompt is skipped).

    The whole continuation is decoded again at every token and only what is new is written, so tokens that merge
    into one character (byte-level BPE) come out right.
    """

    def __init__(self, tokenizer: Any, stream: Any):
        self.tokenizer = tokenizer
        self.stream = stream
        self.token_ids: list[int] = []
        self.shown = ""
        self.prompt_seen = False

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        self.token_ids.extend(int(t) for t in value.flatten())
        text = self.tokenizer.decode(self.token_ids)
        self.stream.write(text[len(self.shown) :])
        self.stream.flush()
        self.shown = text

    def end(self) -> None:
        pass


class IdleBetweenTokens(StoppingCriteria):
    """Never stops decoding; lets the analog arrays sit idle for ``seconds`` (their charge keeps leaking) after every
    new token that another decode step will follow, i.e. unless it is the last one allowed or the end-of-text token.

    A stopping criterion is the hook ``generate()`` calls once per chosen token, before the next forward pass.
    """

    def __init__(self, cache: AnalogKVCache, seconds: float, *, prompt_length: int, max_new_tokens: int, eos: int | None):
        self.cache = cache
        self.seconds = seconds
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.eos = eos

    def __call__(self, input_ids: Tensor, scores: Tensor | None, **kwargs: Any) -> Tensor:
        generated = input_ids.shape[1] - self.prompt_length
        if generated < self.max_new_tokens and int(input_ids[0, -1]) != self.eos:
            self.cache.advance_time(self.seconds)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def decode_hardware(model: nn.Module, token_period: float | None = None) -> HardwareConfig | None:
    """The hardware a model decodes on (None for softmax or unconverted models), with another ``token_period``
    (seconds per token, keeping the retention time) if given.  The model itself is left as it is."""
    spec = attention_spec(model)
    if not isinstance(spec, HardwareConfig):
        return None
    if token_period is None:
        return spec
    if not (token_period > 0 and math.isfinite(token_period)):
        raise GaincellError(f"token_period must be a positive number of seconds, got {token_period}")
    tau = spec.retention_time
    return spec.replace(token_period=token_period, retention_time=None if math.isinf(tau) else tau)


def _check_generate_args(
    prompt: str, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, idle: float
) -> None:
    if not prompt:
        raise GaincellError("prompt is empty: give at least one character of text")
    if max_new_tokens < 1:
        raise GaincellError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise GaincellError("need temperature >= 0, top_k >= 1, 0 < top_p <= 1")
    if not (idle >= 0 and math.isfinite(idle)):
        raise GaincellError(f"idle must be a finite number of seconds >= 0, got {idle}")


@contextmanager
def _seeded_sampling(seed: int, device: torch.device) -> Iterator[None]:
    """``generate()`` samples from torch's global random stream: seed it for this call and give the caller's state back."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


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
    """Decode up to ``max_new_tokens`` after ``prompt`` with ``model.generate()``; analog models decode through an
    :class:`AnalogKVCache` on :func:`decode_hardware` (``token_period`` changes the hardware clock, not the model).

    ``temperature`` 0 is greedy; otherwise tokens are sampled (``top_k``, ``top_p``) from a stream seeded with ``seed``.
    ``idle`` seconds pass between consecutive tokens and ``refresh_period`` turns on periodic refresh.  Decoding stops
    at the tokenizer's end-of-text token.  ``stream`` (a text file object) receives the new text as it comes.
    Puts the model in eval mode.  Returns text, token count and host speed, plus hardware time and energy when analog.
    """
    _check_generate_args(prompt, max_new_tokens, temperature, top_k, top_p, idle)
    model.eval()
    hw = decode_hardware(model, token_period)
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
    if ids.numel() == 0:
        raise GaincellError("the prompt tokenizes to nothing")
    cache = _decode_cache(model, hw, refresh_period)
    eos = tokenizer.eos_token_id
    stopping = StoppingCriteriaList()
    if hw is not None and idle:
        stopping.append(IdleBetweenTokens(cache, idle, prompt_length=ids.shape[1], max_new_tokens=max_new_tokens, eos=eos))
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
    started = time.perf_counter()
    with _seeded_sampling(seed, device):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),  # nothing is padding, whatever the token ids
            cache=cache,
            max_new_tokens=max_new_tokens,
            # no end-of-text token: an empty list, since None would let the model's own generation config choose one
            eos_token_id=eos if eos is not None else [],
            pad_token_id=eos if eos is not None else 0,
            streamer=TextStreamWriter(tokenizer, stream) if stream is not None else None,
            stopping_criteria=stopping,
            **(sampling if temperature > 0 else {"do_sample": False}),
        )
    host = time.perf_counter() - started
    new = out[0, ids.shape[1] :].tolist()
    result: dict[str, Any] = {
        "prompt": prompt,
        "text": tokenizer.decode(new),
        "new_tokens": len(new),
        "host_seconds": host,
        "tokens_per_s": len(new) / host,
    }
    if hw is not None:
        result.update(_hardware_figures(model, hw, cache))
    return result


def _decode_cache(model: nn.Module, hw: HardwareConfig | None, refresh_period: float | None) -> Any:
    """The analog cache on ``hw`` (refreshed every ``refresh_period`` s if given), or transformers' own for softmax."""
    if hw is None:
        return DynamicCache(config=model.config)
    refresh = "periodic" if refresh_period else "none"
    return AnalogKVCache(model, hardware=hw, refresh=refresh, refresh_period=refresh_period)


def _hardware_figures(model: nn.Module, hw: HardwareConfig, cache: AnalogKVCache) -> dict[str, Any]:
    """Simulated time, refresh writes and (when the cost model covers this hardware) attention latency and energy."""
    writes = cache.refresh_writes
    figures: dict[str, Any] = {
        "hardware": hw.name,
        "token_period_s": hw.token_period,
        "retention_time_s": hw.retention_time,
        "hardware_time_s": cache.time,
        "hardware_time_per_token_s": cache.time / max(1, cache.get_seq_length()),
        "refresh_writes": writes,
        "refresh_energy_j": writes * COMPONENTS["e_write"].value,
    }
    try:
        cost = analog_cost(hw, model_shape_of(model))
        figures.update(
            attention_latency_per_token_s=cost["latency_per_token_all_layers_s"],
            energy_per_token_j=cost["energy_per_token_j"],
        )
    except GaincellError as exc:  # the cost model cannot cost this hardware: say so, do not guess
        figures.update(attention_latency_per_token_s=None, energy_per_token_j=None, cost_note=str(exc))
    return figures


# ---------------------------------------------------------------------------------------------------- retention study
@contextmanager
def _fresh_noise_streams(model: nn.Module, hardware: HardwareConfig) -> Iterator[None]:
    """Every layer draws its read noise from a stream seeded from ``hardware`` (as right after conversion), so each
    decoded run draws the same noise whatever ran before; the model's own streams are put back afterwards."""
    saved = [(maps, maps.generator) for maps in head_maps(model)]
    try:
        for maps, _ in saved:
            device = maps.q_scale.device
            maps.generator = make_generator(hardware, maps.layer, device) if hardware.has_noise else None
        yield
    finally:
        for maps, generator in saved:
            maps.generator = generator


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
    """Perplexity when every token is decoded through a fresh analog cache on ``hardware``, per ``context``-token chunk.

    Chunks are decoded side by side (one batch); ``idle`` seconds pass between consecutive tokens.  The model (its
    per-head maps) is used as converted; only the cache runs on ``hardware``.
    """
    if not is_converted(model):
        raise GaincellError("cache_perplexity needs a converted model (gaincell.convert)")
    n = ids.numel() // context
    if n < 1:
        raise GaincellError(f"the text has {ids.numel()} tokens, fewer than one context of {context}")
    chunks = ids[: n * context].view(n, context)
    refresh = "periodic" if refresh_period else "none"
    cache = AnalogKVCache(model, hardware=hardware, refresh=refresh, refresh_period=refresh_period)
    nll, count = 0.0, 0
    with _fresh_noise_streams(model, hardware):
        for t in range(context - 1):
            if t and idle:
                cache.advance_time(idle)
            logits = model(input_ids=chunks[:, t : t + 1], cache=cache, use_cache=True).logits[:, -1].float()
            nll -= float(torch.log_softmax(logits, -1).gather(-1, chunks[:, t + 1 : t + 2]).sum())
            count += n
    return {"perplexity": math.exp(nll / count), "tokens": count, "refresh_writes": cache.refresh_writes}


def _check_retention_args(base: Any, taus: list[float], idles: list[float]) -> None:
    if not isinstance(base, HardwareConfig):
        raise GaincellError("the retention study needs a model converted to analog hardware")
    if any(not (t > 0 and math.isfinite(t)) for t in taus):
        raise GaincellError(f"retention times must be > 0 seconds, got {taus}")
    if any(not (i >= 0 and math.isfinite(i)) for i in idles):
        raise GaincellError(f"idle times must be >= 0 seconds, got {idles}")


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
    from tqdm import tqdm

    base = base or attention_spec(model)  # type: ignore[assignment]
    _check_retention_args(base, taus, idles)
    assert base is not None
    e_write = COMPONENTS["e_write"].value  # a refresh rewrites a cell through its DAC
    runs = [(tau, idle, refresh) for idle in idles for refresh in (False, True) for tau in taus]
    rows = []
    with tqdm(total=len(runs) + 1, desc="retention", unit="run", disable=not progress) as bar:
        ideal = cache_perplexity(model, ids, context=context, hardware=base.replace(retention_time=None))
        bar.update(1)
        for tau, idle, refresh in runs:
            period = refresh_fraction * tau if refresh else None
            res = cache_perplexity(
                model, ids, context=context, hardware=base.replace(retention_time=tau), idle=idle, refresh_period=period
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
            bar.update(1)
    return {
        "hardware": base.name,
        "token_period_s": base.token_period,
        "context": context,
        "no_leak_perplexity": ideal["perplexity"],
        "refresh_fraction": refresh_fraction,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------------- retention report
def retention_table(data: dict[str, Any], *, model: str, text: str) -> list[str]:
    """The retention study as markdown lines: one sentence naming ``model`` and ``text``, then one row per run."""
    lines = [
        "# Retention study",
        "",
        f"Perplexity of {model} on {text} ({data['rows'][0]['tokens']} tokens), every token "
        f"decoded through the analog KV cache; no leakage: {data['no_leak_perplexity']:.2f}.",
        "",
        "| tau (s) | idle (s) | refresh | perplexity | refresh writes | refresh energy per token |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        energy = f"{r['refresh_energy_per_token_j'] * 1e9:.3g} nJ" if r["refresh_writes"] else "-"
        lines.append(
            f"| {r['retention_time_s']:g} | {r['idle_s']:g} | {'yes' if r['refresh'] else 'no'} | {r['perplexity']:.2f} "
            f"| {r['refresh_writes']} | {energy} |"
        )
    return lines


def write_retention_report(data: dict[str, Any], out: str | Path, *, model: str, text: str) -> list[Path]:
    """Write ``retention.json``, ``retention.md`` (:func:`retention_table` plus the plot) and ``retention.png`` into
    ``out``; returns their paths."""
    from gaincell.files import atomic_write_text

    out = Path(out)
    paths = [out / "retention.md", out / "retention.json", out / "retention.png"]
    atomic_write_text(paths[1], json.dumps(data, indent=2) + "\n")
    report = [*retention_table(data, model=model, text=text), "", "![perplexity vs retention time](retention.png)", ""]
    atomic_write_text(paths[0], "\n".join(report))
    _retention_plot(data, paths[2])
    return paths


def _retention_plot(data: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    from gaincell.files import atomic_write

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    idles = sorted({r["idle_s"] for r in data["rows"]})
    refresh_label = f"refresh every {data['refresh_fraction']:g} tau"
    for idle in idles:
        for refresh, style in ((False, "o-"), (True, "s--")):
            rs = [r for r in data["rows"] if r["idle_s"] == idle and r["refresh"] == refresh]
            label = f"idle {idle:g} s between tokens, {refresh_label if refresh else 'no refresh'}"
            ax.loglog([r["retention_time_s"] for r in rs], [r["perplexity"] for r in rs], style, label=label)
    ax.axhline(data["no_leak_perplexity"], color="k", lw=0.8, label="no leakage")
    for tau, name in ((SILICON_TAU, f"silicon {SILICON_TAU * 1e3:.3g} ms"), (IGZO_TAU, f"IGZO-like {IGZO_TAU:.3g} s")):
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
