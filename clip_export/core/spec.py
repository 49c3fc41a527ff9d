"""The facts that export, convert, verify and bench all read: declared once, here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# INT8's facts are declared in spec_int8.py (this module stays under the size rule) and read from here.
from clip_export.core.spec_int8 import (  # noqa: F401  (declared there, read from here)
    INT8_BLOCKWISE,
    INT8_CANDIDATE_SCHEMES,
    INT8_FAMILIES,
    INT8_FAMILY_KEYS,
    INT8_MIXED_MAX_FLOAT_SHARE,
    INT8_OUTLIER_SPLIT,
    INT8_SCHEME,
    INT8_SENSITIVITY_ITEMS,
    INT8_VNNI_FLAGS,
    Int8Blockwise,
    Int8Family,
    Int8OutlierSplit,
    Int8Scheme,
    int8_family_for_cpu,
    int8_family_for_weight_type,
    int8_family_of,
)

BATCH_AXIS = "batch"


@dataclass(frozen=True)
class ExecutionProvider:
    """Everything the package knows about one onnxruntime execution provider, declared once: sessions,
    bench's IO binding, the environment probe and the CLI's help read it from here."""

    short: str  # the CLI's --providers value
    ort_name: str  # onnxruntime's name, recorded in every verdict and bench row
    aliases: tuple[str, ...]  # other spellings users type, accepted at the command's edge
    gpu: bool  # verdict rows record the GPU, driver and CUDA it was obtained on
    io_binding_device: str | None  # OrtValue device bench binds inputs and outputs to; None: host memory
    install_hint: str  # what to install when onnxruntime lacks it


# onnxruntime's execution providers; the first is the CPU.
EXECUTION_PROVIDERS: tuple[ExecutionProvider, ...] = (
    ExecutionProvider("cpu", "CPUExecutionProvider", ("ort-cpu",), False, None, "pip install 'clip-export[cpu]'"),
    ExecutionProvider(
        "cuda", "CUDAExecutionProvider", ("gpu",), True, "cuda", "pip install 'clip-export[gpu]' on a CUDA machine"
    ),
    ExecutionProvider(
        "tensorrt",
        "TensorrtExecutionProvider",
        ("trt",),
        True,
        "cuda",
        "needs onnxruntime-gpu and TensorRT 10 libraries",
    ),
)
# The short names the CLI takes → onnxruntime's names.
PROVIDERS: Mapping[str, str] = MappingProxyType({p.short: p.ort_name for p in EXECUTION_PROVIDERS})


def find_provider(name: str) -> ExecutionProvider | None:
    """A provider by its short name, an alias or onnxruntime's name (any case); None when unknown."""
    wanted = name.strip().lower()
    for provider in EXECUTION_PROVIDERS:
        if wanted in (provider.short, provider.ort_name.lower(), *provider.aliases):
            return provider
    return None


CPU_PROVIDER = PROVIDERS["cpu"]
# What runs a TensorRT .plan: TensorRT itself, not an onnxruntime provider.
TENSORRT_RUNTIME = "tensorrt-runtime"


def provider_label(name: str | None) -> str:
    """ "CPUExecutionProvider" → "CPU", for tables."""
    return (name or "").replace("ExecutionProvider", "")


@dataclass(frozen=True)
class PrecisionSpec:
    """Everything the package knows about one ONNX precision, declared once: the pipeline's steps, the
    CLI's conversion commands, the runner's session rule, bench's ceiling and the release's
    transformers.js file names read it here (its thresholds are THRESHOLDS[name])."""

    name: str
    in_pipeline_by_default: bool
    session_rule: str  # "fp16": sessions turn off onnxruntime's crashing NchwcTransformer on CPU
    gemm_ceiling: str  # which of bench's GEMM ceilings its rows are a share of
    hf_suffix: str | None  # transformers.js's dtype suffix; None: named by the INT8 weight type
    # bench's streamed-weights limit at batch 1 its rows are a share of ("fp32": 4-byte weights, "int8":
    # 1-byte weights through MatMulInteger); None where no such limit is measured (fp16 and q4 on CPU).
    streamed_limit: str | None = None
    # "module:function" of the stage that converts the fp32 export to this precision, called as
    # function(model_dir, towers=..., force=..., progress=...) -> ConversionResult. A string, not an
    # import: core never imports a stage; the pipeline and the CLI resolve it (`clip-export NAME` is
    # generated from this row unless cli_convert declares a command with options of its own).
    converter: str | None = None

    @property
    def converted(self) -> bool:
        """Made by a conversion of the fp32 export (a pipeline step and a command of the same name)."""
        return self.converter is not None


# The ONNX precisions export and convert produce (TensorRT engines are "fp32"/"fp16" with format "tensorrt").
# q4: weight-only 4-bit MatMul weights (onnxruntime MatMulNBits), what transformers.js calls "q4".
PRECISION_SPECS: Mapping[str, PrecisionSpec] = MappingProxyType(
    {
        p.name: p
        for p in (
            PrecisionSpec("fp32", True, "fp32", "fp32", "", streamed_limit="fp32"),
            PrecisionSpec("fp16", True, "fp16", "fp32", "_fp16", converter="clip_export.stages.convert:convert_fp16"),
            PrecisionSpec(
                "int8",
                True,
                "fp32",
                "int8",
                None,
                streamed_limit="int8",
                converter="clip_export.stages.quantize8.quantize8:quantize_int8",
            ),
            PrecisionSpec("q4", False, "fp32", "fp32", "_q4", converter="clip_export.stages.quantize4:quantize_q4"),
        )
    }
)
PRECISIONS = tuple(PRECISION_SPECS)
PIPELINE_PRECISIONS = tuple(p.name for p in PRECISION_SPECS.values() if p.in_pipeline_by_default)
DEFAULT_OPSET = 20
# torch 2.14's dynamo exporter emits opset 18 and newer; onnxruntime 1.3x runs up to 23.
SUPPORTED_OPSETS = range(18, 24)
# torch.export specialises a batch of 1 silently, so every export traces a batch of 2.
EXPORT_EXAMPLE_BATCH = 2
# The batch the reference and every verification run in. Dynamic INT8 gives each batch one activation
# scale, so an INT8 artifact's figures are this batch's (verify checks one-at-a-time separately).
VERIFY_BATCH = 8
# onnx protobuf files cannot exceed 2 GiB; larger towers go to external data.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3 - 64 * 1024**2
# The fp32 torch embeddings of the evaluation set, stored beside the artifacts so verify and the
# runtime's serve-time check need no torch.
REFERENCE_NAME = "reference.npz"
# The tokenizer every export bundles for the torch-free runtime (clip_export.core.tokenizer); also the
# file a --tokenizer DIR must hold.
TOKENIZER_NAME = "tokenizer.json"
# How many reference images and captions ClipOnnx.from_release runs through each artifact before
# it serves: enough to catch kernels that break an artifact here, cheap enough for start-up.
SERVE_CHECK_ITEMS = 4
SERVE_CHECK_MODES = ("auto", "always", "off")
# `clip-export bench` stops starting rows after this many seconds (--max-time): the default run on
# ViT-B/32 finishes within 5 minutes on 2 cores of either CPU here (docs/benchmarks.md).
DEFAULT_BENCH_MAX_TIME_S = 240.0


@dataclass(frozen=True)
class TowerSpec:
    name: str
    input_name: str
    input_dtype: str
    output_name: str

    def input_shape(self, context_length: int, image_size: tuple[int, int]) -> list[str | int]:
        if self.name == "visual":
            return [BATCH_AXIS, 3, image_size[0], image_size[1]]
        return [BATCH_AXIS, context_length]

    def output_shape(self, embed_dim: int) -> list[str | int]:
        return [BATCH_AXIS, embed_dim]


TOWERS: Mapping[str, TowerSpec] = MappingProxyType(
    {
        "visual": TowerSpec("visual", "pixel_values", "float32", "image_embeds"),
        "text": TowerSpec("text", "input_ids", "int64", "text_embeds"),
    }
)

# The visual variant with preprocessing inside the graph (clip_export.core.preprocess_graph): one decoded
# RGB image of any size in, the family's resize, crop and normalisation in standard ONNX ops, then the
# tower. Its artifacts have this format, so everything that feeds `pixel_values` skips them.
# Manifest entry formats: an ONNX graph, a TensorRT engine (.plan), a graph with preprocessing in it.
ONNX_FORMAT = "onnx"
TENSORRT_FORMAT = "tensorrt"
PREPROCESSING_FORMAT = "onnx-preprocessing"
# verify's row for the bundled tokenizer.json (the runtime's tokenizer, and every client's): its ids
# on the reference's raw captions must be the reference tokenizer's, id for id; no caption may differ.
TOKENIZER_FORMAT = "tokenizer"
TOKENIZER_CHECK = "exact ids"
CAPTIONS_WITH_OTHER_IDS = "captions_with_other_ids"  # its gated metric (limit 0)
CAPTIONS_CHECKED = "captions_checked"
RAW_IMAGE_INPUT = "image_uint8"
RAW_IMAGE_DTYPE = "uint8"
RAW_IMAGE_SHAPE: tuple[str | int, ...] = ("height", "width", 3)
# The largest image a preprocessing graph takes: PIL's decompression-bomb limit at its default (2 x
# Image.MAX_IMAGE_PIXELS), which the runtime applies when it decodes. Past it the graph fails in its first
# node, before any float copy of the image exists (a 20000x20000 image otherwise peaked at 12.5 GB).
PREPROCESSING_GRAPH_MAX_PIXELS = 2 * 89_478_485
# Resize with antialias needs opset 18; the graph is built at the tower's own opset.
PREPROCESSING_MIN_OPSET = 18
# The resize modes the graph implements; others are refused (open_clip's "longest" pads with a fill).
PREPROCESSING_GRAPH_MODES = ("shortest", "squash")


def raw_image_io(embed_dim: int) -> dict[str, list[dict[str, object]]]:
    """The manifest I/O declaration of a preprocessing graph: one image in, one embedding row out."""
    return {
        "inputs": [{"name": RAW_IMAGE_INPUT, "dtype": RAW_IMAGE_DTYPE, "shape": list(RAW_IMAGE_SHAPE)}],
        "outputs": [{"name": TOWERS["visual"].output_name, "dtype": "float32", "shape": [1, embed_dim]}],
    }


def artifact_file_name(source: str, precision: str | None = None, preprocessing: bool = False) -> str:
    """The one naming rule for derived ONNX files: visual.onnx → visual.q4.onnx, visual.preprocessing.onnx, visual.int8.preprocessing.onnx."""
    stem = source[: -len(".onnx")] if source.endswith(".onnx") else source
    parts = [stem] + ([precision] if precision else []) + (["preprocessing"] if preprocessing else [])
    return ".".join(parts) + ".onnx"


def engine_file_name(source: str, precision: str, epcontext: bool = False) -> str:
    """The naming rule for TensorRT engines built from an ONNX artifact: visual.fp16.onnx → visual.trt-fp16.plan
    (and visual.trt-fp16.epcontext.onnx, the onnxruntime model that wraps it)."""
    tower = source.split(".")[0]
    return f"{tower}.trt-{precision}." + ("epcontext.onnx" if epcontext else "plan")


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits for one precision; docs/metrics.md says where each number comes from."""

    mean_abs_normalized: float
    max_abs_normalized: float
    min_cosine: float
    top1_agreement: float
    top5_overlap: float

    def replace(self, **changes: float) -> Thresholds:
        values = {**self.__dict__, **{k: v for k, v in changes.items() if v is not None}}
        return Thresholds(**values)


THRESHOLDS: Mapping[str, Thresholds] = MappingProxyType(
    {
        "fp32": Thresholds(1e-5, 2e-4, 0.99999, 1.0, 0.99),
        "fp16": Thresholds(3e-4, 5e-3, 0.999, 1.0, 0.95),
        "int8": Thresholds(4e-3, 6e-2, 0.98, 0.98, 0.85),
        "trt-fp32": Thresholds(1e-5, 2e-4, 0.99999, 1.0, 0.99),
        "trt-fp16": Thresholds(3e-4, 5e-3, 0.999, 1.0, 0.95),
        # 4-bit weights on random-weight towers, the worst case for blockwise scales (docs/metrics.md).
        "q4": Thresholds(5e-2, 0.25, 0.9, 0.95, 0.7),
        # Preprocessing graphs: raw files in, against the exact PIL reference. Resize differs from PIL's
        # fixed-point bicubic by at most a uint8 step or two (more on RGBA, which PIL resamples premultiplied).
        "preproc-fp32": Thresholds(5e-4, 1e-2, 0.999, 1.0, 0.95),
        "preproc-fp16": Thresholds(5e-4, 1e-2, 0.999, 1.0, 0.95),
        "preproc-int8": Thresholds(4e-3, 6e-2, 0.98, 0.98, 0.85),
        "preproc-q4": Thresholds(5e-2, 0.25, 0.9, 0.95, 0.7),
    }
)

# The export-time gate of the export issue: normalised mean |Δ| of an fp32 tower.
EXPORT_PARITY_TOLERANCE = THRESHOLDS["fp32"].mean_abs_normalized


@dataclass(frozen=True)
class Q4Scheme:
    """How `clip-export q4` quantizes MatMul weights (onnxruntime MatMulNBits) and the token embedding
    (com.microsoft.GatherBlockQuantized); docs/convert.md has the measurements."""

    block_size: int
    symmetric: bool
    accuracy_level: int | None  # 4: int8 activations inside MatMulNBits (faster on VNNI); None: fp32
    # The text tower's token-embedding table (a Gather, which MatMulNBits does not cover), in blocks
    # of block_size along each token's row, looked up by com.microsoft.GatherBlockQuantized:
    # 8: uint8 codes, written by clip-export, opset unchanged; 4: onnxruntime's quantizer, an INT4
    # initializer at opset Q4_EMBEDDING_OPSET; None: float. docs/convert.md has the measurements.
    embedding_bits: int | None = 8


Q4_SCHEME = Q4Scheme(block_size=32, symmetric=True, accuracy_level=4)
Q4_EMBEDDING_BITS = (8, 4, None)
# INT4 initializers are a type of ONNX opset 21: onnxruntime's quantizer raises the default domain to
# it (from the export's 20 the ops the towers use changed in 21 only by admitting int4/uint4 and
# float8 types), and the manifest records the new opset.
Q4_EMBEDDING_OPSET = 21


def threshold_key(precision: str, fmt: str) -> str:
    if fmt == PREPROCESSING_FORMAT:
        return f"preproc-{precision}"
    return f"trt-{precision}" if fmt == TENSORRT_FORMAT else precision


# `clip-export embed` (docs/embed.md): what it reads, how it writes, which artifact it picks.
EMBED_CAPTION_SUFFIXES = (".txt",)
EMBED_TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")
# The report's client batch size (CBS) default, and rows per Parquet chunk: a SIGKILL loses at most
# the chunk in flight, never a written one.
EMBED_BATCH_SIZE = 32
EMBED_CHUNK_ROWS = 4096
# The fewest threads in the local engine's pool (one per part run at once, by default one per core):
# with --threads N one of them runs the N-thread session and the others prepare the next batches (PIL,
# libspng and the numba kernels release the GIL for most of their time).
EMBED_READ_THREADS = 2
# The most rows one inference part runs in the default layout (one-thread sessions, one part per
# core at a time): on a 2-core Zen 4 ViT-B/32 INT8 ran 13.7 ms a photo in parts of 8 rows, 14.1-14.6
# in parts of 2-12 and 16.7 in parts of 50, fp32 44.5 in parts of 4-8 and 51.4 in parts of 50: a
# small part's activations stay in its core's cache (benchmarks/embed_part_rows.py). Used as it is
# for towers whose export did not record WIDEST_ACTIVATION_DETAIL (exports before it).
EMBED_PART_ROWS = 8
# Every other tower runs parts of as many rows as hold this many elements at its widest activation
# (at least one): ViT-B/32's image tower holds 50 tokens x 3072 (its MLP) a row, so it keeps its 8
# rows; ViT-L/14's holds 257 x 4096 and gets 1, where on the same CPU INT8 ran 266 ms a photo in
# parts of 1, 265 in parts of 2 or 4 and 280 in parts of 8 (docs/benchmarks.md).
EMBED_PART_ACTIVATIONS = EMBED_PART_ROWS * 50 * 3072
# The fp32 artifact's detail recording its tower's widest activation per row (reference.widest_activation_per_row).
WIDEST_ACTIVATION_DETAIL = "widest_activation_per_row"
# Without --precision, the first of these (for the towers needed) that holds here: a passing verdict
# for its bytes in this environment, or the serve-time check run now. Ordered fastest first on CPU
# (docs/benchmarks.md: INT8 3.5-6x torch eager, fp32 the baseline, fp16 slower than fp32 on CPUs
# without fp16 arithmetic, q4 last for its fidelity).
EMBED_PRECISION_PREFERENCE = ("int8", "fp32", "fp16", "q4")
EMBED_DATA_DIR = "embeddings"
EMBED_ERRORS_NAME = "errors.parquet"
EMBED_MANIFEST_NAME = "dataset.json"
# Each image file's size, mtime, ctime and inode beside the hash its row was made from: a re-run takes a
# file whose stat is unchanged as unchanged without reading it (embed_filestats; --rehash reads every file).
EMBED_FILE_STATS_NAME = "file-stats.parquet"
# A file whose mtime or ctime is not more than this older than its stat gets no entry: changed again
# within its file system's timestamp resolution (2 s on FAT, 1 s on ext3 and HFS+, ns on ext4), it
# could keep its size and both times.
EMBED_FILE_STATS_SETTLE_S = 2.0


@dataclass(frozen=True)
class CompatThresholds:
    """When two artifacts' embeddings can share one index (clip-export compat, docs/embed.md):
    cross retrieval must agree with the all-OLD retrieval this often, and the normalised embeddings
    stay this close. The INT8 gate's own limits: an artifact that passes it against fp32 torch
    passes here against fp32."""

    top1_agreement: float
    top5_overlap: float
    mean_abs_normalized: float


COMPAT_THRESHOLDS = CompatThresholds(top1_agreement=0.98, top5_overlap=0.85, mean_abs_normalized=4e-3)
