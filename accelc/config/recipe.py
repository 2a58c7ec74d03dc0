"""The recipe: pydantic v2 models (the schema is the docs) and a loader that
turns every validation problem into `file:line:col field.path: message`."""
from __future__ import annotations

import math
import os
import re
import string
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from accelc.config import yamlio
from accelc.config.dims import DIM_NAME, DimSpec, check_dims
from accelc.errors import Problem, RecipeError, did_you_mean
from accelc.passes.registry import PASS_CONFIGS

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
MAX_ELEMENTS = 1 << 28  # per input at the largest batch: 1 GiB of float32
ENTRYPOINT = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
OUTPUT_FIELDS = ("name", "target")


def located_error(message: str, *at) -> PydanticCustomError:
    """A model-level error that belongs to a field below the model (`at`), so that the loader
    can point at that field's line instead of the enclosing section."""
    return PydanticCustomError("located", message, {"at": at})  # `message` must not contain "{at}"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z_]\w*$", description="Input name; the predictor's keyword for it.")
    shape: list[Union[int, str]] = Field(
        min_length=1, max_length=8,
        description="Dimensions: sizes, 'batch' for the batch dimension, or the name of a dimension declared "
        "in model.dims (e.g. 'seq'), whose sizes are buckets padded as model.dims says.")
    dtype: Literal[DTYPES] = Field("float32", description="Element type.")  # type: ignore[valid-type]
    range: tuple[float, float] | None = Field(
        None, description="[low, high) of the values: generated samples are drawn from it, and for an integer "
        "input the runtime refuses others (E805). An integer input that indexes a table defaults to the table's "
        "range; any other integer input needs one (E310) unless data.samples is given.")
    columns: list[str] | None = Field(
        None, description="Raw schema: the name of each entry of the last dimension, in order (recorded in the "
        "manifest; data.csv reads these columns).")
    units: list[str] | None = Field(None, description="Unit of each column, in the order of `columns`.")

    @model_validator(mode="after")
    def _columns(self):
        if self.columns is not None:
            last = self.shape[-1]
            if not isinstance(last, int) or last != len(self.columns):
                raise located_error(f"{len(self.columns)} columns but the last dimension is {last!r}", "columns")
            repeated = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if repeated:
                raise located_error(f"column names must be unique; repeated: {repeated}", "columns")
        if self.units is not None and (self.columns is None or len(self.units) != len(self.columns)):
            raise located_error("units needs columns, one unit per column", "units")
        return self

    @field_validator("shape", mode="before")
    @classmethod
    def _dim_types(cls, shape):
        """One clear message instead of one per member of the int|str union (and no bools as 1)."""
        if isinstance(shape, list):
            for dim in shape:
                if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                    raise ValueError(f"a dimension is a positive integer, 'batch' or a name from model.dims, "
                                     f"got {dim!r:.40}")
        return shape

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list) -> list:
        for dim in shape:
            if isinstance(dim, str) and not re.fullmatch(DIM_NAME, dim):
                raise ValueError(f"dimension name '{dim:.40}' is not an identifier")
            if isinstance(dim, int) and not 1 <= dim <= 1 << 20:
                raise ValueError(f"dimension {dim} is outside [1, 1048576]")
        names = [d for d in shape if isinstance(d, str)]
        repeated = sorted({d for d in names if names.count(d) > 1})
        if repeated:
            raise ValueError(f"'{repeated[0]}' may appear once")
        return shape

    @field_validator("range")
    @classmethod
    def _range(cls, value):
        if value is not None and not (math.isfinite(value[0]) and math.isfinite(value[1]) and value[0] < value[1]):
            raise ValueError("range must be finite [low, high) with low < high")
        return value

    def concrete(self, batch: int, sizes: dict[str, int] | None = None) -> tuple[int, ...]:
        """The shape at a batch size and a size per named dimension (model.dims)."""
        return tuple(batch if d == "batch" else (sizes or {})[d] if isinstance(d, str) else int(d)
                     for d in self.shape)

    def axis(self, dim: str) -> int | None:
        """Where the named dimension `dim` lies in the shape, or None."""
        return self.shape.index(dim) if dim in self.shape else None


HF_TASKS = ("feature-extraction", "causal-lm", "masked-lm", "seq2seq-lm", "sequence-classification",
            "token-classification", "question-answering", "image-classification", "audio-classification")


class HuggingFaceSource(Strict):
    path: str | None = Field(None, description="A directory written by save_pretrained (config.json and "
                             "weights), relative to the repository, or a hub id already in the local Hugging "
                             "Face cache. Nothing is downloaded.")
    task: Literal[HF_TASKS] = Field("feature-extraction", description="Which head to load: "  # type: ignore[valid-type]
                                    f"{', '.join(HF_TASKS)} (feature-extraction: the bare model).")
    config: dict[str, Any] = Field(default_factory=dict, description="Config fields to set (num_labels, "
                                   "hidden sizes, ...). Without a path it must name model_type.")
    random_weights: bool = Field(False, description="Build from the config with random weights (seeded): for "
                                 "tests and benchmarks of an architecture; no weights are read.")
    outputs: list[str] | None = Field(None, min_length=1, description="Output fields to keep, in the model "
                                      "output's order (e.g. [logits]); default: all of them.")

    @model_validator(mode="after")
    def _source(self):
        if self.path is None and not (self.random_weights and "model_type" in self.config):
            raise located_error("give a path, or random_weights: true with config.model_type", "path")
        return self


class ModelSection(Strict):
    entrypoint: str | None = Field(None, pattern=ENTRYPOINT, description="'package.module:callable' returning an "
                                   "nn.Module, imported relative to the recipe's repository.")
    huggingface: HuggingFaceSource | None = Field(None, description="A transformers model instead of an "
                                                  "entrypoint: the recipe's inputs are passed to it by name.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the entrypoint.")
    weights: str | None = Field(None, description="Weights file (.safetensors, or .pt loaded with "
                                "weights_only=True), relative to the recipe's repository.")
    inputs: list[InputSpec] = Field(min_length=1, description="The model's positional inputs, in order.")
    batch: list[StrictInt] = Field([1], min_length=1, description="Batch sizes the artifact must serve and is "
                             "verified at.")
    dims: dict[str, DimSpec] = Field(default_factory=dict, description="Named dimensions besides batch, e.g. "
                                     "{seq: {sizes: [32, 128], pad: {input_ids: 0}, mask: attention_mask}}: "
                                     "inputs name them in their shape; outputs that follow them are cut back.")

    @field_validator("batch")
    @classmethod
    def _batch(cls, sizes: list[int]) -> list[int]:
        if any(not 1 <= b <= 65536 for b in sizes):
            raise ValueError("batch sizes must be in [1, 65536]")
        return sorted(set(sizes))

    @model_validator(mode="after")
    def _sizes(self):
        if (self.entrypoint is None) == (self.huggingface is None):
            raise located_error("give model.entrypoint or model.huggingface (one of them)", "entrypoint")
        if self.huggingface is not None and (self.kwargs or self.weights):
            raise located_error("kwargs and weights go with an entrypoint; a Hugging Face model takes its "
                                "weights from huggingface.path", "kwargs" if self.kwargs else "weights")
        names = [i.name for i in self.inputs]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise located_error(f"input name '{name}' is used twice", "inputs", index, "name")
        check_dims(self.dims, self.inputs)
        largest = {name: dim.sizes[-1] for name, dim in self.dims.items()}
        for index, spec in enumerate(self.inputs):  # refused before anything is allocated
            count = math.prod(spec.concrete(max(self.batch), largest))
            if count > MAX_ELEMENTS:
                at = "".join(f", {n} {s}" for n, s in largest.items() if n in spec.shape)
                raise located_error(f"input '{spec.name}' has {count} elements at batch {max(self.batch)}{at}; "
                                    f"the limit is {MAX_ELEMENTS}", "inputs", index, "shape")
        return self


class CallableSource(Strict):
    fn: str = Field(pattern=ENTRYPOINT, description="'package.module:callable', imported relative to the "
                    "recipe's repository.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to it on every call "
                                 "(checked against its signature before the build).")


# A data source is 'module:callable' or {fn, args}; the tags never show in error locations.
SOURCE_TAGS = ("entrypoint-name", "entrypoint-call")
DataSource = Annotated[Union[Annotated[str, Tag(SOURCE_TAGS[0]), Field(pattern=ENTRYPOINT)],
                             Annotated[CallableSource, Tag(SOURCE_TAGS[1])]],
                       Discriminator(lambda v: SOURCE_TAGS[1] if isinstance(v, (dict, CallableSource)) else SOURCE_TAGS[0])]


class DataSection(Strict):
    samples: DataSource | None = Field(None, description="Callable(n, seed, **args) returning sample inputs "
                                       "(an array, a tuple of arrays, or {name: array}) for verification: "
                                       "'module:callable', or {fn: 'module:callable', args: {...}}; default: "
                                       "random from the input specs (integers in the range the model's tables "
                                       "take, or the declared one).")
    calibration: str | None = Field(None, pattern=ENTRYPOINT, description="Callable returning calibration "
                                    "inputs for static quantization.")
    validation: str | None = Field(None, pattern=ENTRYPOINT, description="Callable returning (inputs, labels) "
                                   "on which verify.metric is evaluated.")
    train: str | None = Field(None, pattern=ENTRYPOINT, description="Callable returning (inputs, labels) to "
                              "fine-tune on after pruning; the default of prune's finetune.data.")
    csv: str | None = Field(None, description="CSV file (relative to the repository) with the validation data "
                            "for verify.metric: the first input's `columns` plus the label column.")
    label: str | None = Field(None, description="Label column of data.csv (0/1 for binary metrics).")

    @model_validator(mode="after")
    def _csv(self):
        if self.csv is not None and self.validation is not None:
            raise located_error("give data.csv or data.validation, not both", "csv")
        if self.csv is not None and self.label is None:
            raise located_error("data.csv needs data.label, the name of the label column", "csv")
        if self.label is not None and self.csv is None:
            raise located_error("data.label names a column of data.csv, which is not given", "label")
        return self


class RpcRunner(Strict):
    tracker: str = Field(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$",
                         description="HOST:PORT of the TVM RPC tracker the devices registered with.")
    key: str = Field(pattern=r"^[\w.-]+$", description="Device key the RPC servers registered with (--key).")
    parallel: StrictInt = Field(1, ge=1, le=1024, description="Candidates measured at once (about the number of "
                                "devices).")
    timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds to reach the tracker and "
                           "for each measurement session.")

    @field_validator("tracker")
    @classmethod
    def _port(cls, value: str) -> str:
        if not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError(f"port of '{value}' is outside [1, 65535]")
        return value


class RunnerSection(Strict):
    rpc: RpcRunner | None = Field(None, description="Measure on remote devices through a TVM RPC tracker.")


def _runner_schema(schema: dict) -> None:
    """`runner: local` is read as {} (a before-validator); say so in the JSON Schema editors use."""
    field = schema["properties"]["runner"]
    schema["properties"]["runner"] = {"anyOf": [{"const": "local"}, {"$ref": field.pop("$ref")}], **field}


class TuningSection(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_runner_schema)
    trials: StrictInt | None = Field(None, ge=0, le=1_000_000, description="Measured candidates in all; 0 or unset "
                                     "builds untuned unless per_task or time_budget is set.")
    per_task: StrictInt | None = Field(None, ge=1, le=1_000_000, description="Most measured candidates per kernel.")
    time_budget: float | None = Field(None, gt=0, le=7 * 24 * 3600, allow_inf_nan=False, description="Seconds of "
                                      "tuning: no batch of candidates starts after them (the first always runs); "
                                      "the best found so far is kept.")
    database: str = Field(".accelc/tuning", description="Tuning database directory, relative to the repository; "
                          "one per project, shared by its recipes (records are kept per target).")
    threads: int = Field(default_factory=lambda: _physical_cores(), ge=1, le=1024,
                         description="Threads the tuned module is scheduled for (default: this machine's cores).")
    runner: RunnerSection = Field(default_factory=RunnerSection, description="Where candidates are measured: "
                                  "'local' (this machine) or {rpc: {tracker: HOST:PORT, key: KEY, parallel: N}}.")

    @field_validator("runner", mode="before")
    @classmethod
    def _local(cls, value):
        if isinstance(value, str):
            if value != "local":
                raise ValueError(f"runner is 'local' or {{rpc: {{tracker: HOST:PORT, key: KEY}}}}, got '{value:.40}'")
            return {}
        return value

    @model_validator(mode="after")
    def _untuned(self):
        if self.trials == 0 and (self.per_task or self.time_budget):
            raise located_error("trials: 0 builds untuned, but per_task/time_budget ask for tuning", "trials")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.trials or self.per_task or self.time_budget)


def _physical_cores() -> int:
    import os
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Tolerance(Strict):
    atol: float = Field(1e-4, ge=0, allow_inf_nan=False, description="Absolute tolerance per element.")
    rtol: float = Field(1e-3, ge=0, allow_inf_nan=False, description="Relative tolerance per element.")


class MetricGate(Strict):
    name: Literal["auc", "accuracy", "logloss", "mse", "top1"] = Field(description="Task metric.")
    max_drop: float = Field(ge=0, allow_inf_nan=False, description="Largest allowed worsening of the metric.")


class SqnrGate(Strict):
    vs_rewritten: float | None = Field(None, ge=0, le=300, allow_inf_nan=False, description=(
        "SQNR floor in dB of the artifact vs the rewritten graph, per output over all samples of a batch size: "
        "an output outside the tolerance passes when its SQNR reaches it (absent: tolerance only)."))
    vs_original: float | None = Field(None, ge=0, le=300, allow_inf_nan=False, description=(
        "SQNR floor in dB of the artifact vs the original model (float32), per output: a label-free gate on "
        "what the passes cost (absent: not checked)."))


class VerifySection(Strict):
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Compiled vs rewritten graph, per element.")
    samples: StrictInt = Field(8, ge=1, le=10_000, description="Seeded sample batches per batch size.")
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1, description="Seed for generated samples.")
    metric: MetricGate | None = Field(None, description="Task-metric gate on data.validation.")
    sqnr: SqnrGate | None = Field(None, description=(
        "SQNR floors for outputs where a per-element tolerance cannot hold (deep int8 graphs). Default with an "
        "int8 quantize pass: {vs_rewritten: 40, vs_original: 15}; none otherwise; {} checks neither."))


PassConfig = Annotated[Union[tuple(PASS_CONFIGS.values())], Field(discriminator="kind")]


class Recipe(Strict):
    version: Literal[1] = Field(description="Recipe format version.")
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]{0,63}$", description="Name used in output paths.")
    model: ModelSection = Field(description="What to compile.")
    data: DataSection = Field(default_factory=DataSection, description="Where sample data comes from.")
    passes: list[PassConfig] = Field(default_factory=list, description="Graph rewrites, applied in order.")
    target: str = Field("x86", description="Target name or alias from targets/; --target overrides.")
    tuning: TuningSection = Field(default_factory=TuningSection, description="MetaSchedule tuning.")
    verify: VerifySection = Field(default_factory=VerifySection, description="How the artifact is checked.")
    output: str = Field("build/{name}-{target}", description="Artifact directory; {name} and {target} expand.")

    @field_validator("output")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        """Only {name} and {target}: anything else would fail (or run format specs) at build time."""
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"malformed placeholder: {exc}; write a literal brace as {{{{ or }}}}") from None
        for _, name, spec, conversion in parts:
            if name is not None and (name not in OUTPUT_FIELDS or spec or conversion):
                text = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                raise ValueError(f"placeholder '{{{text}}}' is not allowed; only {{name}} and {{target}} expand")
        return value


class LoadedRecipe(BaseModel):
    """A validated recipe plus where it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    recipe: Recipe
    path: Path
    root: Path  # the recipe's repository: entrypoints and relative paths resolve here
    text: str
    located: Any = None

    def where(self, *field_path) -> str:
        return self.located.where(field_path) if self.located else str(self.path)

    def resolve(self, relative: str, *field_path) -> Path:
        """A recipe path inside the recipe's repository; `..` or a symlink leading out of it is
        refused unless ACCELC_ALLOW_OUTSIDE_REPO=1 (recipes come from repositories and CI runs them)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()) and os.environ.get("ACCELC_ALLOW_OUTSIDE_REPO") != "1":
            raise RecipeError(f"path '{relative}' leads outside the recipe's repository {self.root}",
                              code="E107", location=self.where(*field_path), field=".".join(map(str, field_path)),
                              hint="keep files inside the repository, or set ACCELC_ALLOW_OUTSIDE_REPO=1")
        return path


def find_root(recipe_path: Path) -> Path:
    """The nearest ancestor holding pyproject.toml or .git; else the recipe's parent's parent."""
    start = recipe_path.resolve().parent
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").exists() or (folder / ".git").exists():
            return folder
    return start.parent if start.name == "recipes" else start


# ---- turning pydantic errors into located problems -------------------------------------------

def _unwrap(annotation) -> list:
    """The BaseModel classes an annotation may hold (through Optional, list, Annotated, Union)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation) if origin is not None else ():
        found.extend(_unwrap(arg))
    return found


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the mapping at `loc` (pass configs chosen by kind)."""
    model: type[BaseModel] | None = Recipe
    for depth, part in enumerate(loc):
        if depth == 2 and loc[0] == "passes" and part in PASS_CONFIGS:  # the tag after passes[i]
            model = PASS_CONFIGS[part]
        elif model is not None and not isinstance(part, int):
            info = model.model_fields.get(part)
            candidates = _unwrap(info.annotation) if info else []
            model = candidates[0] if len(candidates) == 1 else None
    return model


def _clean_loc(loc: tuple) -> tuple:
    """Drop the discriminator tag pydantic inserts after passes[i]."""
    if len(loc) >= 3 and loc[0] == "passes" and isinstance(loc[1], int) and loc[2] in PASS_CONFIGS:
        return loc[:2] + loc[3:]
    return loc


def _problem(err: dict, located: yamlio.Located, tagged_loc: tuple) -> Problem:
    tagged_loc = tuple(part for part in tagged_loc if part not in SOURCE_TAGS)  # data sources' union
    loc = _clean_loc(tagged_loc)
    kind, field = err["type"], yamlio.dotted(loc)
    if kind == "extra_forbidden":
        parent = _model_at(tagged_loc[:-1])
        hint = did_you_mean(loc[-1], parent.model_fields) if parent else None
        if parent and not hint:
            hint = "allowed keys: " + ", ".join(parent.model_fields)
        return Problem("E103", f"unknown key '{loc[-1]}'", located.where(loc, prefer_key=True), field, hint)
    if kind == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        hint = did_you_mean(tag, PASS_CONFIGS) or "known kinds: " + ", ".join(PASS_CONFIGS)
        return Problem("E104", f"unknown pass kind '{tag}'", located.where(loc + ("kind",)),
                       yamlio.dotted(loc + ("kind",)), hint)
    if kind == "union_tag_not_found":
        return Problem("E104", "a pass needs a 'kind'", located.where(loc), field,
                       "known kinds: " + ", ".join(PASS_CONFIGS))
    if kind == "located":
        loc = loc + tuple(err["ctx"]["at"])
        return Problem("E102", err["msg"], located.where(loc), yamlio.dotted(loc))
    if kind == "missing":
        return Problem("E102", f"missing required field '{loc[-1]}'", located.where(loc[:-1]), field)
    message = err["msg"].removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error"):
        message += f" (got {err.get('input')!r:.60})"
    return Problem("E102", message, located.where(loc), field)


def parse(located: yamlio.Located) -> Recipe:
    """Validate parsed YAML against the schema; all problems at once."""
    if located.data is None:  # an empty file, or only comments
        raise RecipeError("the recipe is empty: it needs at least version, name, model and target",
                          code="E102", location=located.where(()),
                          hint="start from recipes/edu_churn.yaml, or see `accelc schema`")
    if not isinstance(located.data, dict):
        kind = {list: "a list", str: "a single string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(located.data), type(located.data).__name__)
        raise RecipeError(f"a recipe is a mapping of sections (version:, name:, model:, ...), got {kind}",
                          code="E102", location=located.where(()))
    try:
        return Recipe.model_validate(located.data)
    except ValidationError as exc:
        problems = [_problem(err, located, tuple(err["loc"])) for err in exc.errors()]
        problems += _missing_model_source(located, problems)
        raise RecipeError(problems=sorted(set(problems), key=lambda p: _line_order(p.location))) from None


def _missing_model_source(located: yamlio.Located, problems: list[Problem]) -> list[Problem]:
    """model.entrypoint or model.huggingface is required, but neither is a required field, and a
    model-level check only runs when every field is valid: report the absence with the rest."""
    model = located.data.get("model")
    if not isinstance(model, dict) or "entrypoint" in model or "huggingface" in model or any(
            p.field in ("model", "model.entrypoint") and p.code == "E102" for p in problems):
        return []
    return [Problem("E102", "missing required field 'entrypoint' (or 'huggingface')", located.where(("model",)),
                    "model.entrypoint")]


def _line_order(location: str | None) -> tuple:
    match = re.search(r":(\d+):(\d+)$", location or "")
    return (int(match[1]), int(match[2])) if match else (0, 0)


def load(path: str | Path) -> LoadedRecipe:
    """Load, validate and locate a recipe file."""
    path = Path(path)
    display = _display(path)
    located = yamlio.load_file(path, display)
    recipe = parse(located)
    return LoadedRecipe(recipe=recipe, path=path.resolve(), root=find_root(path), text=path.read_text("utf-8"),
                        located=located)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def json_schema() -> dict:
    return Recipe.model_json_schema()
