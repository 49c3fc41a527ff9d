"""CLIP's byte-level BPE tokenizer without torch, for serving.

open_clip's SimpleTokenizer imports torch, which costs a serving process a second of start-up and
hundreds of MB for what is a string-to-ids function. This one reads the same merges file, and the
export bundles that file only after checking this tokenizer id for id against open_clip's.
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ClipExportError

VOCAB_NAME = "tokenizer-bpe.txt.gz"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
WORD_END = "</w>"
_MERGE_COUNT = 49152 - 256 - 2  # the merges CLIP was trained with; the file holds more

# Strings that exercise every step of the cleaning and splitting, for the export-time check.
PROBE_TEXTS = (
    "a photo of a cat",
    "  Mixed CASE,   extra   spaces\tand\nnewlines  ",
    "&amp;lt;html&amp;gt; entities &quot;twice&quot;",
    "mojibake: cafÃ© â€” fixed by ftfy",
    "digits 1234567890 and 3.14159, 'quotes' it's we'll they're I'd",
    "emoji 🐱🚀 and symbols ©®™ ½ ∑",
    "宇宙飛行士の写真, Ελληνικά, русский, עברית, العربية",
    "<start_of_text> and <end_of_text> typed by a user",
    "",
    "word " * 100,
)


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Each byte as a printable character (indexed by byte), and the same symbols in CLIP's
    vocabulary order: the bytes that print as themselves first, then the rest, shifted past 255
    so that BPE never sees whitespace or control characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    printable_set = set(printable)
    shifted = [b for b in range(256) if b not in printable_set]
    symbol = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}
    return tuple(symbol[b] for b in range(256)), tuple(symbol[b] for b in printable + shifted)


def _text_libraries() -> tuple[Any, Any]:
    try:
        import ftfy
        import regex
    except ImportError as exc:
        raise ClipExportError(f"tokenizing captions needs '{exc.name}', a dependency of clip-export that is missing; reinstall with: pip install clip-export") from None
    return ftfy, regex


class ClipBpeTokenizer:
    """Captions to CLIP token ids: the same ids as open_clip's default tokenizer (lower-case
    cleaning, truncation that keeps the end-of-text token), as an int64 numpy array."""

    def __init__(self, vocab_path: Path, context_length: int = 77, cache_limit: int = 100_000) -> None:
        ftfy, regex = _text_libraries()
        self._fix_text = ftfy.fix_text
        with gzip.open(vocab_path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
        if len(merges) != _MERGE_COUNT or any(len(m) != 2 for m in merges):
            raise ClipExportError(f"{vocab_path} is not a CLIP BPE merges file ({len(merges)} merges, {_MERGE_COUNT} expected)")
        self._byte_to_symbol, ordered = byte_symbols()
        vocabulary = [*ordered, *(s + WORD_END for s in ordered), *("".join(m) for m in merges), *SPECIAL_TOKENS]
        self._ids = {token: index for index, token in enumerate(vocabulary)}
        self._rank = {pair: rank for rank, pair in enumerate(merges)}
        self._pieces: dict[str, tuple[str, ...]] = {t: (t,) for t in SPECIAL_TOKENS}
        self._cache_limit = cache_limit  # a server sees unbounded vocabularies of user text
        self.sot_token_id, self.eot_token_id = self._ids[SPECIAL_TOKENS[0]], self._ids[SPECIAL_TOKENS[1]]
        self.context_length = context_length
        self._words = regex.compile(
            "|".join(regex.escape(t) for t in SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def _clean(self, text: str) -> str:
        text = html.unescape(html.unescape(self._fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def _merge(self, word: str) -> tuple[str, ...]:
        """Apply the learned merges, lowest rank first, until none applies."""
        known = self._pieces.get(word)
        if known is not None:
            return known
        parts = [*word[:-1], word[-1] + WORD_END]
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: self._rank.get(pair, _MERGE_COUNT))
            if best not in self._rank:
                break
            merged: list[str] = []
            index = 0
            while index < len(parts):
                if index + 1 < len(parts) and (parts[index], parts[index + 1]) == best:
                    merged.append(parts[index] + parts[index + 1])
                    index += 2
                else:
                    merged.append(parts[index])
                    index += 1
            parts = merged
        if len(self._pieces) >= self._cache_limit + len(SPECIAL_TOKENS):
            self._pieces = {t: (t,) for t in SPECIAL_TOKENS}
        self._pieces[word] = tuple(parts)
        return self._pieces[word]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self._words.findall(self._clean(text)):
            symbols = "".join(self._byte_to_symbol[b] for b in word.encode("utf-8"))
            ids.extend(self._ids[piece] for piece in self._merge(symbols))
        return ids

    def __call__(self, texts: Sequence[str], context_length: int | None = None) -> np.ndarray:
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[: length - 1] + [self.eot_token_id]
            out[row, : len(ids)] = ids
        return out


def bundled_vocab_source(open_clip_tokenizer: Any) -> Path | None:
    """open_clip's merges file when its tokenizer is the plain CLIP one this module reproduces;
    None for anything else (Hugging Face tokenizers, other cleaning, reduction masks)."""
    try:
        from open_clip import tokenizer as oc_tokenizer
    except ImportError:
        return None
    plain = (
        type(open_clip_tokenizer) is oc_tokenizer.SimpleTokenizer
        and getattr(open_clip_tokenizer, "reduction_fn", None) is None
        and getattr(open_clip_tokenizer, "clean_fn", None) is getattr(oc_tokenizer, "_clean_lower", object())
        and getattr(open_clip_tokenizer, "vocab_size", None) == 49408
    )
    return Path(oc_tokenizer.default_bpe()) if plain else None


def agrees_with(tokenizer: ClipBpeTokenizer, reference: Any, texts: Sequence[str], context_length: int) -> bool:
    """Id-for-id agreement with open_clip's tokenizer on these texts (and at a short context,
    which exercises truncation)."""
    for length in (context_length, 8):
        expected = np.asarray(reference(list(texts), context_length=length).numpy(), dtype=np.int64)
        if not np.array_equal(tokenizer(texts, context_length=length), expected):
            return False
    return True


def bundle_vocab(open_clip_tokenizer: Any, context_length: int, texts: Sequence[str], target_dir: Path) -> Path | None:
    """Copy the merges file next to the artifacts when this tokenizer gives open_clip's ids on
    `texts` and the probe strings; otherwise None, and the runtime keeps using open_clip."""
    import shutil

    source = bundled_vocab_source(open_clip_tokenizer)
    if source is None:
        return None
    try:
        tokenizer = ClipBpeTokenizer(source, context_length)
    except ClipExportError:
        return None  # not bundling leaves serving on open_clip's tokenizer, which works
    if not agrees_with(tokenizer, open_clip_tokenizer, [*PROBE_TEXTS, *texts], context_length):
        return None
    target = Path(target_dir) / VOCAB_NAME
    shutil.copyfile(source, target)
    return target
