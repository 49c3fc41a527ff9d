"""A small runtime for released artifacts: the search engine's `vectorise()` without torch models.

    model = ClipOnnx.from_release("dist/ViT-B-32-v1", provider="cpu")
    image_vectors = model.embed_images(["photo.jpg"])
    text_vectors = model.embed_texts(["a photo of a cat"])

Hashes are checked on load; preprocessing and tokenization follow the manifest. Captions are
tokenized with the tokenizer.json the export bundled after checking its ids (clip_export.core.tokenizer:
the `tokenizers` library, no torch, every family); exports made before that use open_clip's.

Images are preprocessed by default ("fast") with vectorised kernels that resample only what the
centre crop keeps (clip_export.core.resample): open_clip's pixels bit for bit, 3-6x (the report's small
JPEG) to 9-14x (its wide RGBA PNG) faster than PIL's own resize (docs/benchmarks.md).
`preprocess="exact"` runs PIL's own code, for comparison.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip_export.core.artifact import ArtifactEntry, Manifest
from clip_export.core.configs import PreprocessConfig
from clip_export.core.environment import current_environment
from clip_export.core.errors import ClipExportError, import_optional
from clip_export.core.manifest import read_manifest, require_intact, resolve_inside
from clip_export.core.preprocess import load_image, preprocess_fast, preprocess_reference
from clip_export.core.runner import open_runner
from clip_export.core.spec import CPU_PROVIDER, ONNX_FORMAT, TOWERS, int8_family_for_cpu, int8_family_of
from clip_export.runtime.serve_check import ServeCheck, ServingInputs, check_here, load_reference_slice, require_mode

PREPROCESSORS = {"fast": preprocess_fast, "exact": preprocess_reference}


@dataclass(frozen=True)
class LoadedArtifact:
    path: Path
    precision: str
    provider: str


class ClipOnnx:
    """Both towers of one release, ready to embed one document at a time or in batches."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        visual: Any,
        text: Any,
        info: dict[str, LoadedArtifact],
        preprocess: str = "fast",
    ) -> None:
        self.root = root
        self.manifest = manifest
        self._visual = visual
        self._text = text
        self.artifacts = info
        self.preprocess_config = manifest.preprocess
        self._preprocess = _preprocessor(preprocess)
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()  # embed's worker threads tokenize concurrently
        self.normalized_in_graph = manifest.normalize
        self.serve_checks: dict[str, ServeCheck] = {}  # per tower: what from_release checked here, or why it skipped
        self.cpu_flags: tuple[str, ...] = ()  # the flags from_release picked the INT8 family by

    @classmethod
    def from_release(
        cls,
        path: str | Path,
        provider: str = "cpu",
        precision: str = "fp32",
        threads: int = 0,
        preprocess: str = "fast",
        check: str = "auto",
        cpu_flags: Collection[str] | None = None,
        towers: Collection[str] | None = None,
        passed_checks: Mapping[str, str] | None = None,
    ) -> ClipOnnx:
        """Open a release directory (or an artifact directory), check every file it will use, and
        check each artifact's numbers here (serve_check): "auto" skips that where this exact
        environment already has a passing verdict, "always" runs it, "off" serves unchecked.
        precision="int8" serves the INT8 kernel family this CPU's flags call for (QInt8 with
        avx512_vnni, avx_vnni or amx_int8, else QUInt8); `cpu_flags` replaces the probe of this
        CPU's flags (tests, or a deployment that knows better). `towers` opens only those (a
        captions-only index need not load and check the image tower); default: every tower.
        `passed_checks` ({coverage: environment key}, from ServeCheck.passed_here) are checks another
        process of the same job passed (the driver of `embed --ray`, for its actors): under "auto"
        they skip the check for the same bytes, input settings and preprocessing in exactly that
        environment, as a verdict would."""
        _preprocessor(preprocess)  # refuse bad names before loading anything
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ClipExportError(f"threads must be 0 (onnxruntime's choice) or a positive count, not {threads!r}")
        require_mode(check)
        wanted = set(TOWERS) if towers is None else {towers} if isinstance(towers, str) else set(towers)
        if not wanted or wanted - set(TOWERS):
            raise ClipExportError(
                f"towers must be some of {', '.join(TOWERS)}, not {', '.join(sorted(wanted - set(TOWERS))) or 'none'}"
            )
        root = Path(path)
        manifest = read_manifest(root)
        flags = tuple(cpu_flags) if cpu_flags is not None else current_environment(CPU_PROVIDER).isa_flags
        sessions: dict[str, Any] = {}
        entries: dict[str, ArtifactEntry] = {}
        info: dict[str, LoadedArtifact] = {}
        for tower in TOWERS:
            candidates = manifest.select(tower=tower, format=ONNX_FORMAT, precision=precision)
            if not candidates or tower not in wanted:
                continue
            entry = entries[tower] = pick_for_cpu(candidates, flags)
            require_intact(root, entry, f"refusing to load {entry.path}")
            session = open_runner(root, entry, provider, threads=threads, stop_spinning_after_run=True).session
            sessions[tower] = session
            info[tower] = LoadedArtifact(root / entry.path, precision, session.get_providers()[0])
        if not sessions:
            available = "; ".join(
                f"{tower}: {', '.join(sorted({f'{a.precision}/{a.format}' for a in manifest.select(tower=tower)})) or 'none'}"
                for tower in TOWERS
            )
            raise ClipExportError(
                f"{root} has no {precision} ONNX artifact for {', '.join(t for t in TOWERS if t in wanted)}; "
                f"available: {available}"
            )
        reference = functools.cache(
            lambda: load_reference_slice(root, manifest, set(sessions))
        )  # read only if a check runs
        vocab = manifest.section_file("tokenizer.file", str(root)) or manifest.section_file(
            "tokenizer.bpe_vocab", str(root)
        )
        if vocab and "text" in sessions:
            require_intact(root, vocab, "refusing to load the tokenizer")
        model = cls(root, manifest, sessions.get("visual"), sessions.get("text"), info, preprocess)
        model.cpu_flags = flags
        serving = ServingInputs(model.pixel_values, preprocess == "exact", model.tokenize)
        model.serve_checks = {
            tower: check_here(
                manifest, entries[tower], sessions[tower], reference, check, serving, flags, passed_checks
            )
            for tower in sessions
        }
        return model

    def passed_checks(self) -> dict[str, str]:
        """Every tower's serve-time pass here ({what it covers: environment key}), for from_release's
        `passed_checks` in another process of the same job (an `embed --ray` actor)."""
        return {covers: key for check in self.serve_checks.values() for covers, key in check.passed_here.items()}

    def pixel_values(self, images: Any) -> np.ndarray:
        """[N, 3, H, W] from one image or a list (see embed_images); a bad item is named by index."""
        rows = []
        for index, item in enumerate(_items(images, "images", _is_one_image)):
            try:
                rows.append(self._preprocess(load_image(item), self.preprocess_config))
            except ClipExportError as exc:
                raise ClipExportError(f"images[{index}]: {exc}") from exc
        if not rows:
            return np.zeros((0, 3, *self.preprocess_config.image_size), dtype=np.float32)
        return rows[0][None] if len(rows) == 1 else np.stack(rows)  # one image: no stacking copy

    def _open_session(self, tower: str) -> Any:
        """The tower's session, or one error saying why it cannot embed."""
        session = self._visual if tower == "visual" else self._text
        if session is None:
            raise ClipExportError(self._not_open(tower))
        return session

    def _not_open(self, tower: str) -> str:
        """Why a tower cannot embed: the release has none of this precision, or from_release left it shut."""
        precision = next(iter(self.artifacts.values())).precision
        if not self.manifest.select(tower=tower, format=ONNX_FORMAT, precision=precision):
            return f"{self.root} has no {precision} {tower} tower"
        return f"{self.root}: the {tower} tower is not open (opened: {', '.join(sorted(self.artifacts))})"

    def embed_images(self, images: Any, normalize: bool = True) -> np.ndarray:
        """One row per image. An image is a file path, encoded bytes (what a service receives), an
        HxWx3 uint8 RGB array (HxW grey and HxWx4 RGBA too) or a PIL image; one of them alone is a
        batch of one."""
        self._open_session("visual")  # before any image is decoded
        return self.embed_pixels(self.pixel_values(images), normalize)

    def embed_pixels(self, pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        """One row per image of [N, 3, H, W] float32 pixel_values already preprocessed (pixel_values())."""
        session = self._open_session("visual")
        return self._run(
            session, TOWERS["visual"].input_name, np.ascontiguousarray(pixels, dtype=np.float32), normalize
        )

    def tokenize(self, texts: Any) -> np.ndarray:
        if isinstance(texts, (bytes, bytearray)):  # iterable, but one row per byte would be nonsense
            raise ClipExportError("texts: bytes are not a caption; decode them to str first (texts.decode('utf-8'))")
        captions = _items(texts, "texts", lambda value: isinstance(value, str))
        for index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ClipExportError(f"texts[{index}]: type {type(caption).__name__} is not a caption; pass str")
        return self.load_tokenizer()(captions)

    def load_tokenizer(self) -> Any:
        """The release's tokenizer, built on first use (once, even from several threads)."""
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = _tokenizer_for(self.manifest, self.root)
        return self._tokenizer

    def embed_texts(self, texts: Any, normalize: bool = True) -> np.ndarray:
        """One row per caption; a bare string is one caption (a batch of one), never its characters."""
        session = self._open_session("text")  # before any caption is tokenized
        return self._run(session, TOWERS["text"].input_name, self.tokenize(texts), normalize)

    def embed_token_ids(self, ids: np.ndarray, normalize: bool = True) -> np.ndarray:
        """One row per caption of [N, context] int64 ids already tokenized (tokenize()): an indexer
        tokenizes where it reads, as it preprocesses images there, and runs the session here."""
        session = self._open_session("text")
        return self._run(session, TOWERS["text"].input_name, np.ascontiguousarray(ids, dtype=np.int64), normalize)

    def _run(self, session: Any, name: str, inputs: np.ndarray, normalize: bool) -> np.ndarray:
        if not len(inputs):  # an empty batch is a valid request: zero rows of the embedding size
            return np.zeros((0, session.get_outputs()[0].shape[-1]), dtype=np.float32)
        out = session.run(None, {name: inputs})[0]
        return _l2(out) if normalize and not self.normalized_in_graph else out


def pick_for_cpu(candidates: list[ArtifactEntry], isa_flags: Collection[str]) -> ArtifactEntry:
    """Of one tower's artifacts of one precision, the one to serve on a CPU with these flags: for
    int8, the kernel family the flags call for when the release carries it, else one whose family
    holds on this CPU, else the first (which the serve-time check then refuses)."""
    families = [int8_family_of(entry) for entry in candidates]
    if len(candidates) < 2 or None in families:
        return candidates[0]
    wanted = int8_family_for_cpu(isa_flags)
    for entry, family in zip(candidates, families):
        if family == wanted:
            return entry
    for entry, family in zip(candidates, families):
        if family is not None and family.applies_to(isa_flags):
            return entry
    return candidates[0]


def _is_one_image(value: Any) -> bool:
    return isinstance(value, (str, Path, bytes, bytearray, memoryview, Image.Image)) or (
        isinstance(value, np.ndarray) and value.ndim in (2, 3)
    )


def _items(values: Any, what: str, is_one: Callable[[Any], bool]) -> list[Any]:
    """A batch from one item or any iterable of them; anything else is named, not iterated."""
    if is_one(values):
        return [values]
    if isinstance(values, (dict, set)) or not hasattr(values, "__iter__"):
        raise ClipExportError(f"{what} must be one item or a list of them, not type {type(values).__name__}")
    return list(values)


def _preprocessor(name: str) -> Callable[[Image.Image, PreprocessConfig], np.ndarray]:
    if name not in PREPROCESSORS:
        raise ClipExportError(f"the requested preprocessing was {name!r}; available: {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[name]


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _tokenizer_for(manifest: Manifest, root: Path) -> Any:
    """The bundled tokenizer.json (no torch, every family), the CLIP merges file that exports before
    it bundled, else, for those older exports only, the library the manifest names."""
    from clip_export.core.tokenizer import TextTokenizer, clip_bpe_tokenizer

    settings = manifest.tokenizer
    context = settings.context_length
    file = manifest.section_file("tokenizer.file", str(root))
    vocabulary = manifest.section_file("tokenizer.bpe_vocab", str(root))
    if file:
        return TextTokenizer.from_file(resolve_inside(root, file.path, "the tokenizer file"), settings)
    if vocabulary:
        return TextTokenizer(
            clip_bpe_tokenizer(resolve_inside(root, vocabulary.path, "the tokenizer vocabulary")),
            "lower",
            context,
            0,
        )
    if settings.kind == "huggingface":
        transformers = import_optional(
            "transformers",
            package="transformers",
            extra="hf",
            purpose="the tokenizer of an export made from a Hugging Face directory",
        )
        hf = transformers.CLIPTokenizer.from_pretrained(
            str(manifest.model.source).split(":", 1)[1], local_files_only=True
        )
        return lambda texts: np.asarray(
            hf(texts, padding="max_length", truncation=True, max_length=context)["input_ids"], dtype=np.int64
        )
    import open_clip

    arch = manifest.model.arch
    tokenizer = open_clip.get_tokenizer(arch if arch in open_clip.list_models() else "ViT-B-32")
    if (tokenizer.sot_token_id, tokenizer.eot_token_id) != (settings.sot_token_id, settings.eot_token_id):
        raise ClipExportError(f"the tokenizer for {arch} does not use the SOT/EOT ids recorded in the manifest")
    return lambda texts: tokenizer(texts, context_length=context).numpy().astype(np.int64)
