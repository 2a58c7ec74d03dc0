"""The typed contract between the compiler and the runtime: what manifest.json holds.

The compiler builds a `Manifest` and the artifact store writes `to_json()`; readers get one from
`Manifest.from_json` (the only way in from disk), which refuses unknown, missing and mistyped
fields with ArtifactError E701 and the JSON path of the value. The JSON format is unchanged from
the untyped manifests, so artifacts built before load as they are.

Stdlib only: production servers read manifests with it, without torch or the compiler.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from accelc.artifact.records import Invalid, Record, nullable
from accelc.errors import ArtifactError

FORMAT = 1
BATCH = "batch"  # the symbolic batch dimension in a shape
# What numpy and TVM's DLPack both name; an artifact's tensors hold nothing else.
DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                    "float16", "bfloat16", "float32", "float64"})
Status = Literal["pending", "passed", "failed", "skipped"]


@dataclass(frozen=True)
class TensorSpec(Record):
    """An input or output of the compiled function: its name, shape ("batch" for the batch
    dimension, a name from the manifest's `dims` for a bucketed one, e.g. "seq") and dtype, and for
    inputs what the build learnt about their values."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    range: tuple[float, float] | None = None  # [low, high) of ids that index a table (E805 outside)
    columns: tuple[str, ...] | None = None  # the raw schema: a name per entry of the last dimension
    units: tuple[str, ...] | None = None
    unaligned: bool = False  # its kernels read it at element alignment: no 64-byte copy needed

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise Invalid("dtype", f"unknown dtype {self.dtype!r}; expected one of {', '.join(sorted(DTYPES))}")
        for i, dim in enumerate(self.shape):
            if isinstance(dim, str) and not re.fullmatch(r"[A-Za-z_]\w*", dim) or isinstance(dim, int) and dim < 0:
                raise Invalid(f"shape[{i}]", f"expected 'batch', a dimension's name or a size >= 0, got {dim!r}")
        names = [d for d in self.shape if isinstance(d, str)]
        repeated = sorted({d for d in names if names.count(d) > 1})
        if repeated:
            raise Invalid("shape", f"'{repeated[0]}' may appear once")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise Invalid("range", f"expected [low, high) with low < high, got {list(self.range)}")

    @property
    def batched(self) -> bool:
        """Whether the first dimension is the batch (the runtime pads and splits along it)."""
        return self.shape[:1] == (BATCH,)

    @property
    def dims(self) -> tuple[int | None, ...]:
        """The shape with None for the batch and the named (bucketed) dimensions."""
        return tuple(None if isinstance(d, str) else d for d in self.shape)

    def axis(self, dim: str) -> int | None:
        """Where the named dimension `dim` lies in the shape, or None."""
        return self.shape.index(dim) if dim in self.shape else None


@dataclass(frozen=True)
class Dim(Record):
    """A named dimension besides batch (a sequence length): the sizes built, the value each input is
    padded with up to a size, and the input marking real positions (1) and padding (0). Inputs and
    outputs carry it by name in their shapes; an output's axis named so is cut back to the length."""

    name: str
    sizes: tuple[int, ...]
    pad: dict[str, float]
    mask: str | None = None

    def __post_init__(self):
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise Invalid("sizes", f"expected increasing sizes >= 1, got {list(self.sizes)}")


def bucket_key(batch: int | None, sizes: tuple[int, ...] = ()) -> str:
    """A `functions` key: the batch size ("None": no batch dimension), then a size per named dimension."""
    return ",".join([str(batch), *map(str, sizes)])


@dataclass(frozen=True)
class RecipeSource(Record):
    """The recipe as it was built: where it was, its hash, and its whole text (`accelc verify`)."""

    path: str
    sha256: str
    text: str


@dataclass(frozen=True)
class TargetInfo(Record):
    """The target the library was compiled for; the runtime refuses to load it elsewhere (E704)."""

    name: str
    tvm: dict[str, Any]  # TVM's target dict, as the target file gives it
    host: dict[str, Any] | None
    device: str  # "cpu" or "cuda"
    arch: str  # the host CPU architecture: x86_64, aarch64
    cpu_features: tuple[str, ...]
    cuda_archs: tuple[str, ...]


@dataclass(frozen=True)
class GraphSize(Record):
    """A graph's size before or after a pass."""

    params: int
    macs: int  # per sample
    ops: int


@dataclass(frozen=True)
class PassReport(Record):
    """What one pass did. `stats` holds the pass's own figures (each pass chooses its keys)."""

    EXTRA = "stats"
    kind: str
    changed: bool
    seconds: float
    before: GraphSize
    after: GraphSize
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Repair(Record):
    """A rewrite that works around a fault of torch.export or TVM, and the nodes it touched."""

    repair: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class KernelTuning(Record):
    """One kernel's line of the tuning summary."""

    kernel: str
    weight: int
    trials: int
    new_trials: int
    best_us: float | None
    gflops: float | None
    status: str  # tuned, reused, default, elementwise
    schedule: str | None = nullable()  # whether the best schedule is the default or a searched one
    default_us: float | None = None  # the default schedule's measured time
    share: float | None = None  # of the tuned kernels' time (calls x default time) that budgets follow


@dataclass(frozen=True)
class Tuning(Record):
    """The tuning summary: only `trials` (0) when the recipe does not tune."""

    trials: int
    tasks: int | None = None
    tuned_tasks: int | None = None
    defaulted_tasks: int | None = None
    failed_trials: int | None = None
    seconds: float | None = None
    stopped_by: str | None = None
    runner: str | None = None
    database: str | None = None
    first_error: str | None = None
    kernels: tuple[KernelTuning, ...] | None = None


@dataclass(frozen=True)
class Tolerance(Record):
    atol: float
    rtol: float


@dataclass(frozen=True)
class OutputCheck(Record):
    """One output at one batch size: how far the artifact was from the reference."""

    output: str
    batch: int
    samples: int
    max_abs: float
    max_rel: float
    mismatched: int
    elements: int
    passed: bool
    note: str | None = None
    bucket: dict[str, int] | None = None  # the size of each named dimension the samples ran on
    sqnr_db: float | None = None  # vs the reference, over all samples (inf: no difference)
    sqnr_original_db: float | None = None  # vs the original model, where verify.sqnr.vs_original is set
    criterion: Literal["tolerance", "sqnr"] | None = None  # what passed it: per element, or SQNR


@dataclass(frozen=True)
class SqnrFloors(Record):
    """SQNR floors in dB (None: not checked): vs the reference, and vs the original model."""

    vs_rewritten: float | None = None
    vs_original: float | None = None


@dataclass(frozen=True)
class MetricCheck(Record):
    """The task metric of the original model and of the artifact on the validation data."""

    name: str
    original: float
    compiled: float
    drop: float  # positive: the artifact is worse
    max_drop: float
    passed: bool
    examples: int | None = None


@dataclass(frozen=True)
class Verification(Record):
    """The verification report: `pending` while the build verifies, then passed, failed or
    skipped (with the reason: a target this machine cannot run)."""

    status: Status
    rows: tuple[OutputCheck, ...] = ()
    tolerance: Tolerance | None = None
    reference: str | None = None
    reason: str | None = None
    runner: str | None = None  # an emulator, when the artifact ran under one
    metric: MetricCheck | None = None
    sqnr: SqnrFloors | None = None


@dataclass(frozen=True)
class DeviceCode(Record):
    """The CUDA code a library embeds: machine code per sm_XY, PTX for newer GPUs."""

    format: str
    embedded: bool
    archs: tuple[str, ...]
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    cuda: str | None  # the nvcc release that compiled it


@dataclass(frozen=True)
class Versions(Record):
    accelc: str
    torch: str
    tvm: str
    llvm: str | None
    python: str
    numpy: str


@dataclass(frozen=True)
class KernelOrigin(Record):
    """One compiled kernel (a symbol of the library), recorded as the build scheduled it: the rule
    that did, its tags, and the model code it computes (`accelc profile` shows them)."""

    kernel: str
    rule: str  # a rule of schedules.RULES, "MetaSchedule record", ... (backends/tvm/kernel_map.py)
    tags: tuple[str, ...]  # its blocks' tags (kernels/tags.py)
    nodes: tuple[str, ...]  # the fx nodes fused into it; empty where none is known
    ops: tuple[str, ...]  # their ATen ops
    modules: tuple[str, ...]  # their modules, from nn_module_stack ("encoder.layer.3.intermediate.dense")
    sources: tuple[str, ...]  # the model's source lines that made them ("modeling_bert.py:337")


@dataclass(frozen=True)
class BuildCache(Record):
    keys: tuple[str, ...]  # the build-cache keys this artifact answers


@dataclass(frozen=True)
class Signature(Record):
    algorithm: str
    hmac: str


@dataclass(frozen=True)
class Manifest(Record):
    """Everything an artifact says about itself (README "Artifacts")."""

    accelc: str
    name: str
    recipe: RecipeSource
    target: TargetInfo
    batch: tuple[int, ...]  # the batch sizes compiled
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    functions: dict[str, str]  # bucket_key: batch size ("None": no batch dimension)[,size per dim] -> the VM function
    params: tuple[str, ...]  # parameter names in the order the functions take them
    param_bytes: int
    passes: tuple[PassReport, ...]
    repairs: tuple[Repair, ...]
    versions: Versions
    tuning: Tuning
    verification: Verification
    verified: bool
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256; the store fills it in
    format: int = FORMAT
    device_code: DeviceCode | None = None
    cache: BuildCache | None = None
    signature: Signature | None = None  # checked on the JSON as written, before parsing
    dims: tuple[Dim, ...] | None = None  # named dimensions besides batch (absent: none)
    kernels: tuple[KernelOrigin, ...] | None = None  # absent in artifacts built before it was recorded

    def __post_init__(self):
        if self.format != FORMAT:
            raise Invalid("format", f"unknown format {self.format}; this accelc reads format {FORMAT}")
        for key in self.functions:
            batch, *sizes = key.split(",")
            if len(sizes) != len(self.dims or ()) or not all(
                    part.isdigit() and int(part) > 0 for part in [*sizes, *([batch] if batch != "None" else [])]):
                raise Invalid(f"functions[{key!r}]", f"expected a batch size or 'None', then a size per named "
                              f"dimension ({len(self.dims or ())})")
        names = [spec.name for spec in self.inputs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise Invalid("inputs", f"input names must be unique; repeated: {repeated}")

    @classmethod
    def from_json(cls, data: Any, where: str | None = None) -> Manifest:
        """The manifest in `data` (parsed JSON); ArtifactError E701 naming the field's JSON path
        (and `where`, the file) when a field is unknown, missing or of the wrong type."""
        try:
            return cls.parse(data)
        except Invalid as exc:
            raise ArtifactError(exc.message, code="E701", location=where, field=exc.path or None,
                                hint="the artifact was edited or written by another tool; rebuild it") from None

    @property
    def by_batch(self) -> dict[int | None, str]:
        """The VM function per built batch size (None: the model has no batch dimension), for an
        artifact without named dimensions."""
        return {None if key == "None" else int(key): name for key, name in self.functions.items()}

    @property
    def by_bucket(self) -> dict[tuple[int, ...], dict[int | None, str]]:
        """The VM function per built batch size, per bucket (a size per named dimension)."""
        table: dict[tuple[int, ...], dict[int | None, str]] = {}
        for key, name in self.functions.items():
            batch, *sizes = key.split(",")
            table.setdefault(tuple(map(int, sizes)), {})[None if batch == "None" else int(batch)] = name
        return table

    def with_verification(self, report: Verification) -> Manifest:
        """This manifest with `report`; `verified` only when it passed."""
        return replace(self, verification=report, verified=report.status == "passed")


PENDING = Verification("pending")
