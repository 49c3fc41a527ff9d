"""Captions to ids without torch, for every family: Hugging Face `tokenizers` reading a bundled
tokenizer.json, behind open_clip's own text cleaning.

open_clip cleans each caption in Python before its tokenizer sees it (ftfy's mojibake repair,
HTML unescaping twice, whitespace, and lower-casing or punctuation removal per family). Those are
not tokenizer.json normalizers (`tokenizers` has no ftfy and no HTML entity table), so the same
cleaning runs here, in plain Python, and the tokenizer.json does the rest: for CLIP's BPE the
vocabulary and merges built the way open_clip's SimpleTokenizer builds them, with its word regex,
byte-level symbols and `</w>` suffix; for Hugging Face families the fast tokenizer open_clip
wraps. Truncation and padding are written into the file: truncation leaves room for the special
tokens the post-processor adds, so CLIP keeps its end-of-text id in the last position.
The export checks these ids against the reference tokenizer before it spends time on anything.
"""

from __future__ import annotations

import gzip
import html
import string
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_export.core.errors import ClipExportError, import_optional
from clip_export.core.spec import TOKENIZER_NAME

if TYPE_CHECKING:
    from clip_export.core.sections import TokenizerSection

__all__ = ["TOKENIZER_NAME", "TextTokenizer", "clean_text", "clip_bpe_tokenizer", "first_disagreement"]
CLEAN_KINDS = (
    "lower",
    "whitespace",
    "canonicalize",
    "none",
)  # none: a Hugging Face CLIP directory cleans in its own normalizer
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
WORD_END = "</w>"
_MERGE_COUNT = 49152 - 256 - 2  # the merges CLIP was trained with; open_clip's file holds more
_CLIP_WORDS = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# Strings that exercise every step of the cleaning, splitting and truncation, for the export-time check.
PROBE_TEXTS = (
    "a photo of a cat",
    "  Mixed CASE,   extra   spaces\tand\nnewlines  ",
    "&amp;lt;html&amp;gt; entities &quot;twice&quot; &#39;numeric&#39;",
    "mojibake: cafÃ© â€” fixed by ftfy",
    "digits 1234567890 and 3.14159, 'quotes' it's we'll they're I'd",
    "emoji 🐱🚀 and symbols ©®™ ½ ∑",
    "宇宙飛行士の写真, Ελληνικά, русский, עברית, العربية",
    "<start_of_text> and <end_of_text> typed by a user",
    "<s> </s> <pad> <unk> [CLS] [SEP] <mask> typed by a user",
    "snake_case and under_scores",
    "",
    "word " * 100,
)


def _tokenizers() -> Any:
    return import_optional("tokenizers", package="tokenizers", extra="hf", purpose="tokenizing captions")


def clean_text(text: str, kind: str) -> str:
    """open_clip's clean functions (open_clip.tokenizer, which imports torch), the same steps."""
    if kind == "none":
        return text
    try:
        import ftfy
    except ImportError as exc:
        raise ClipExportError(
            "tokenizing captions needs 'ftfy', a dependency of clip-export that is missing; reinstall "
            "with: pip install clip-export"
        ) from exc
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if kind == "canonicalize":  # big_vision's: underscores to spaces, punctuation removed, lower case
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    text = " ".join(text.split()).strip()
    return text.lower() if kind == "lower" else text


_PUNCTUATION = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """The 256 byte symbols in CLIP's vocabulary order: bytes that print as themselves first,
    then the rest shifted past 255 (GPT-2's bytes_to_unicode, as open_clip orders them)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in set(printable)]
    symbol = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}
    return tuple(symbol[b] for b in printable + shifted)


def clip_bpe_tokenizer(merges_path: Path) -> Any:
    """A tokenizers.Tokenizer equal to open_clip's SimpleTokenizer from its gzipped merges file."""
    tk = _tokenizers()
    with gzip.open(merges_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
    if len(merges) != _MERGE_COUNT or any(len(m) != 2 for m in merges):
        raise ClipExportError(
            f"{merges_path} is not a CLIP BPE merges file ({len(merges)} merges, {_MERGE_COUNT} expected)"
        )
    ordered = byte_symbols()
    vocabulary = [*ordered, *(s + WORD_END for s in ordered), *("".join(m) for m in merges), *SPECIAL_TOKENS]
    ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=ids, merges=merges, end_of_word_suffix=WORD_END))
    tokenizer.normalizer = clip_normalizer()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(_CLIP_WORDS), behavior="removed", invert=True),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS[0]} $A {SPECIAL_TOKENS[1]}", special_tokens=[(s, ids[s]) for s in SPECIAL_TOKENS]
    )
    return tokenizer


def clip_normalizer() -> Any:
    """The part of open_clip's "lower" cleaning a tokenizer.json can hold (NFC, as ftfy leaves text;
    whitespace runs folded to one space; stripped; lower case), so the file alone, read by any
    ecosystem's tokenizer, gives open_clip's ids except where ftfy or HTML unescaping would change
    the text (docs/models.md). After clean_text it changes nothing."""
    tk = _tokenizers()
    return tk.normalizers.Sequence(
        [
            tk.normalizers.NFC(),
            tk.normalizers.Replace(tk.Regex(r"\s+"), " "),
            tk.normalizers.Strip(),
            tk.normalizers.Lowercase(),
        ]
    )


def copy_of(backend: Any) -> Any:
    """An independent tokenizers.Tokenizer from a fast tokenizer's backend (settings are per object)."""
    return _tokenizers().Tokenizer.from_str(backend.to_str())


def fix_length(tokenizer: Any, context_length: int, pad_token_id: int) -> Any:
    """Truncate and pad every caption to `context_length`, as open_clip does; written into the file."""
    tokenizer.enable_truncation(context_length)
    pad_token = tokenizer.id_to_token(pad_token_id) or "<pad>"
    tokenizer.enable_padding(length=context_length, pad_id=pad_token_id, pad_token=pad_token)
    return tokenizer


class TextTokenizer:
    """open_clip's ids as an int64 [N, context_length] array, from a tokenizer.json: no torch."""

    def __init__(self, tokenizer: Any, clean: str, context_length: int, pad_token_id: int) -> None:
        if clean not in CLEAN_KINDS:
            raise ClipExportError(
                f"the manifest's tokenizer cleaning is {clean!r}; clip-export knows {', '.join(CLEAN_KINDS)}"
            )
        self._tokenizer = fix_length(tokenizer, context_length, pad_token_id)
        self.clean, self.context_length, self.pad_token_id = clean, context_length, pad_token_id
        self._other_lengths: dict[int, Any] = {}

    @classmethod
    def from_file(cls, path: Path, settings: TokenizerSection) -> TextTokenizer:
        try:
            tokenizer = _tokenizers().Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise ClipExportError(
                f"{path.name} is not a tokenizer.json the tokenizers library can read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        return cls(
            tokenizer,
            settings.clean or "lower",
            settings.context_length,
            settings.pad_token_id,
        )

    def save(self, path: Path) -> None:
        self._tokenizer.save(str(path))

    def __call__(self, texts: Sequence[str], context_length: int | None = None) -> np.ndarray:
        tokenizer = self._tokenizer
        if context_length and context_length != self.context_length:
            if context_length not in self._other_lengths:
                self._other_lengths[context_length] = fix_length(
                    copy_of(self._tokenizer), context_length, self.pad_token_id
                )
            tokenizer = self._other_lengths[context_length]
        encoded = tokenizer.encode_batch([clean_text(t, self.clean) for t in texts])
        length = context_length or self.context_length
        return np.asarray([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), length)


def first_disagreement(
    ours: TextTokenizer, reference: Callable[[Sequence[str], int], Any], texts: Sequence[str]
) -> str | None:
    """The first text (at the model's context and at 8, which truncates) whose ids differ, else None."""
    for length in (ours.context_length, 8):
        for text in texts:
            expected = np.asarray(reference([text], length), dtype=np.int64)
            got = ours([text], length)
            if not np.array_equal(got, expected):
                where = int(np.argmax(got[0] != expected[0])) if got.shape == expected.shape else 0
                return f"{text[:40]!r} at context {length}: id {got[0][where] if got.size else None} at position {where}, the reference gives {expected[0][where] if expected.size else None}"
    return None
