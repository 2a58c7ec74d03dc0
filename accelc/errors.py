"""Coded errors. User mistakes print one block without a traceback; anything else is a bug.

Every code is registered in CODES (what causes it, what to do, its docs anchor) and lies in the
band of its error class: an error raised with an unregistered code, or one from another class's
band, is a programming error (ValueError). docs/reference/errors.md is generated from CODES.

This module imports neither torch nor TVM nor anything of accelc: the runtime uses it in
production servers.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, with where it is."""

    code: str
    message: str
    location: str | None = None  # "recipes/x.yaml:3:5", "node linear_1 (model.py:12)", "column age, row 7"
    field: str | None = None  # dotted field path in the recipe
    hint: str | None = None

    def format(self) -> str:
        where = f"{self.location}: " if self.location else ""
        path = f"{self.field}: " if self.field else ""
        text = f"error[{self.code}] {where}{path}{self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


@dataclass(frozen=True)
class Code:
    """One error code: the class that raises it, what causes it, what to do (one line each)."""

    code: str  # "E401"
    error: str  # the AccelcError subclass's name
    summary: str
    remedy: str
    anchor: str  # docs/reference/errors.md#e401


class AccelcError(Exception):
    """Base of all user-facing errors; carries one or more problems."""

    exit_code = EXIT_USER_ERROR
    default_code = "E000"
    band = (0, 99)  # the codes this class may carry, E000-E099

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 location: str | None = None, field: str | None = None,
                 hint: str | None = None, problems: list[Problem] | None = None):
        self.problems: list[Problem] = list(problems or [])
        if message is not None:
            self.problems.insert(0, Problem(code or self.default_code, message, location, field, hint))
        for problem in self.problems:
            self._check_code(problem.code)
        super().__init__(self.format())

    @classmethod
    def _check_code(cls, code: str) -> None:
        """Refuse a code that is not registered or lies outside this class's band (a bug at the raise site)."""
        low, high = cls.band
        if code not in CODES:
            raise ValueError(f"{cls.__name__}: error code {code!r} is not registered in accelc.errors.CODES")
        if not low <= int(code[1:]) <= high:
            raise ValueError(f"{cls.__name__}: error code {code} is outside its band E{low:03d}-E{high:03d}")

    @property
    def code(self) -> str:
        return self.problems[0].code if self.problems else self.default_code

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class RecipeError(AccelcError):
    """The recipe file is missing, malformed or does not fit the schema."""
    default_code = "E100"
    band = (100, 199)


class TargetError(AccelcError):
    """Unknown target, malformed target file, or a target the recipe cannot use."""
    default_code = "E200"
    band = (200, 299)


class ModelError(AccelcError):
    """The model entrypoint, its weights or its inputs are wrong."""
    default_code = "E300"
    band = (300, 349)


class DataError(AccelcError):
    """A data source (CSV, sample function) does not fit the recipe."""
    default_code = "E350"
    band = (350, 399)


class UnsupportedOpError(AccelcError):
    """The graph holds ops the backend cannot import or compile."""
    default_code = "E400"
    band = (400, 449)


class PassError(AccelcError):
    """A pass cannot do what its configuration asks."""
    default_code = "E450"
    band = (450, 499)


class ToolchainError(AccelcError):
    """A compiler, cross compiler or emulator needed for the target is missing."""
    default_code = "E500"
    band = (500, 599)


class TuningError(AccelcError):
    """Tuning cannot run: no device to measure on, an unreachable RPC tracker, an unwritable,
    corrupt or foreign tuning database."""
    default_code = "E610"
    band = (610, 699)


class VerificationError(AccelcError):
    """The compiled module does not match its reference (the rewritten graph, or the original model)
    within budget."""
    default_code = "E600"
    band = (600, 609)
    exit_code = EXIT_VERIFY_FAILED


class ArtifactError(AccelcError):
    """An artifact is missing, tampered with, or built for another target."""
    default_code = "E700"
    band = (700, 799)


class InputError(AccelcError):
    """Arrays passed to a predictor do not match the artifact's signature."""
    default_code = "E800"
    band = (800, 899)


def did_you_mean(name: str, candidates, n: int = 1) -> str | None:
    """A 'did you mean' hint when a close candidate exists."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# code, what causes it, what to do: per error class, in its band. CODES is built from this table.
_TABLE: dict[str, tuple[tuple[str, str, str], ...]] = {
    "AccelcError": (
        ("E000", "an accelc error without a more specific code", "read the message; report it if it is unclear"),),
    "RecipeError": (
        ("E100", "the recipe file is missing or cannot be read", "check the path and the file's permissions"),
        ("E101", "the recipe is not valid YAML (syntax, a tag, a merge key) or not UTF-8 text",
         "fix the YAML at the reported line and column"),
        ("E102", "a recipe field is missing or has the wrong type or value",
         "fix the named field; `accelc schema` describes every field"),
        ("E103", "the recipe has a key the schema does not know", "remove it or correct its spelling"),
        ("E104", "a pass has no kind, or an unknown one", "use a pass kind `accelc schema` lists"),
        ("E105", "a mapping key is not a plain scalar, or appears twice", "give each key once, as a string"),
        ("E106", "the recipe is too large: file size, alias expansion or nesting depth",
         "shrink the file; aliases must not expand into huge documents"),
        ("E107", "a path in the recipe leads outside the recipe's repository",
         "keep files inside the repository, or set ACCELC_ALLOW_OUTSIDE_REPO=1")),
    "TargetError": (
        ("E200", "no target has this name or alias", "use a name or alias from targets/*.yaml"),
        ("E201", "a target file is malformed, or an alias names two targets",
         "fix the target file at the reported line"),
        ("E202", "the recipe needs a dtype the target does not support",
         "choose another target, or change the inputs' dtypes or the passes"),
        ("E203", "TVM rejects the target's description", "fix the target's `tvm` dict (kind, mcpu, mtriple)"),
        ("E204", "the target's CUDA archs are unknown to nvcc or older than tvm.arch",
         "list archs nvcc knows, with tvm.arch the oldest of cuda_archs")),
    "ModelError": (
        ("E300", "the model entrypoint cannot be imported, is not callable, or raised",
         "check the `module:function` path and that the function runs"),
        ("E301", "the entrypoint returned something that is not a torch.nn.Module", "return the nn.Module"),
        ("E302", "the weights or the Hugging Face model directory are missing or unreadable",
         "check the path; save weights as .safetensors"),
        ("E303", "the weights do not fit the model: missing, unexpected or mis-shaped tensors",
         "load weights saved from the same architecture"),
        ("E304", "the model fails on inputs of the declared shapes and dtypes, or takes no such input",
         "make model.inputs match what forward() takes"),
        ("E305", "torch.export cannot capture the model", "remove data-dependent Python control flow from forward()"),
        ("E306", "the model returns something other than tensors (or tuples, lists, dicts of them)",
         "return tensors from forward()"),
        ("E307", "transformers is not installed or cannot load the Hugging Face model",
         "pip install transformers; check the model directory or hub id"),
        ("E308", "an input's declared range goes beyond what the model's tables take",
         "declare the range the message gives, a narrower one, or none"),
        ("E309", "an output's axis depends on a named dimension (model.dims) other than as its length",
         "return outputs whose axes are the dimension itself (cut back per call), or pool them"),
        ("E310", "an integer input has no range and indexes no table, so verification cannot choose its values",
         "declare the input's range (the values it takes), or give data.samples")),
    "DataError": (
        ("E350", "the CSV file is missing or cannot be read", "check data.csv's path"),
        ("E351", "the CSV has no header or no data rows", "give a header row and at least one data row"),
        ("E352", "the CSV header repeats columns or lacks columns the inputs name",
         "name each of the input's columns once in the header"),
        ("E353", "a CSV row has the wrong number of fields or a value that is not a number",
         "fix the row; categorical columns take numeric codes, missing values are empty"),
        ("E354", "a CSV column is empty in every row", "fill the column or drop it from the input's columns"),
        ("E355", "a label is not of the kind the metric needs", "give labels the metric takes (0 or 1: binary)"),
        ("E356", "data.samples' callable does not take (n, seed) and the recipe's args",
         "make its signature take them, or fix the names in data.samples.args"),
        ("E357", "the validation data does not fit the model's inputs or the labels",
         "make data.validation return (inputs, labels) that match model.inputs"),
        ("E358", "the metric cannot be computed from these labels and outputs",
         "check that the labels and the model's first output fit the metric"),
        ("E359", "data.samples raised, or returned inputs that do not fit model.inputs (names, count)",
         "return one array per model input: a tuple in order, or {name: array}")),
    "UnsupportedOpError": (
        ("E400", "the graph holds ops TVM cannot import", "replace these ops in the model, or add a converter"),
        ("E401", "TVM cannot compile an op of the model", "replace the named op, or report it")),
    "PassError": (
        ("E450", "a pass cannot do what its configuration asks", "change the pass's settings as the message says"),
        ("E451", "the fine-tuning data source fails or does not fit the model",
         "make it return (inputs, labels) that match model.inputs"),
        ("E452", "fine-tuning diverged", "lower finetune.lr, or check that the inputs are finite and scaled"),
        ("E453", "static quantization has no calibration data", "add data.calibration"),
        ("E454", "the calibration data fails, does not fit the model, or gives non-finite activations",
         "fix the calibration source, or keep the named layers float32 with quantize.skip"),
        ("E455", "quantize.fallback has no metric to keep, or every layer had to stay float32",
         "add verify.metric, raise its max_drop, or quantize fewer layers")),
    "ToolchainError": (
        ("E500", "a tool the build needs is missing", "install the tool the message names (`accelc doctor`)"),
        ("E501", "the target's cross compiler is not installed", "install the package the hint names"),
        ("E502", "linking the compiled library failed", "check the C toolchain with `accelc doctor`"),
        ("E503", "nvcc is missing or cannot run", "install the CUDA toolkit 13, or put nvcc on the PATH"),
        ("E504", "nvcc failed to compile the generated CUDA code", "report it with the nvcc output shown"),
        ("E505", "a piece needed to embed CUDA device code is missing (CUDA runtime, gcc, nm)",
         "install the CUDA 13 runtime (pip install nvidia-cuda-runtime), gcc and binutils"),
        ("E506", "the emulation root of an off-host target cannot be set up or run",
         "install the tools named, then set the root up again with --force"),
        ("E510", "`accelc serve` needs starlette, uvicorn and prometheus-client", "pip install 'accelc[serve]'")),
    "VerificationError": (
        ("E600", "the artifact misses its reference (rewritten graph or original model), its SQNR floor or the metric",
         "drop or soften the pass that costs accuracy, or loosen verify.tolerance, verify.sqnr or max_drop"),
        ("E602", "padding a named dimension (seq) changes the model's outputs at the real positions",
         "declare the mask the model's attention reads (model.dims.<dim>.mask), or build fixed sizes only")),
    "TuningError": (
        ("E610", "tuning is not supported for this kind of target", "set no tuning budget for this target"),
        ("E611", "the RPC tracker cannot be reached", "start the tracker; check tuning.runner.rpc.tracker"),
        ("E612", "the address answers but is not a TVM RPC tracker", "point tuning.runner.rpc.tracker at one"),
        ("E613", "no device with the key is registered at the RPC tracker",
         "start rpc_server with that key, or use a key the tracker has"),
        ("E614", "tuning measures on this machine, which cannot run the target's code",
         "measure on the devices: tuning.runner: {rpc: {tracker, key}}"),
        ("E615", "a folder given to merge is not a tuning database, or its target.json is unreadable",
         "merge only databases written by `accelc tune`"),
        ("E616", "`accelc tune` on a recipe without a tuning budget",
         "set tuning.trials, tuning.per_task or tuning.time_budget"),
        ("E617", "`accelc tune --merge` without the database to merge into", "name it with -o OUT"),
        ("E618", "the tuning database cannot be created or written", "point tuning.database at a writable folder"),
        ("E619", "the tuning database is corrupt, or its target.json unreadable; it is left untouched",
         "move it aside (or fix the named line) and tune again"),
        ("E620", "a tuning database folder holds another target's records (renamed or copied by hand)",
         "never rename or copy database folders; combine databases with `accelc tune --merge`")),
    "ArtifactError": (
        ("E700", "there is no artifact at the path, or its manifest cannot be read",
         "check the path; build the artifact first"),
        ("E701", "the manifest is malformed: not JSON, another format, or a field unknown, missing or mistyped",
         "rebuild the artifact; never edit a manifest by hand"),
        ("E702", "the artifact fails its integrity check: a file missing, extra or modified",
         "rebuild it or copy it again"),
        ("E703", "the output cannot be written: it is not an artifact, or its folder is not writable",
         "choose another --output"),
        ("E704", "the artifact is for a target this machine cannot run", "load it on such a machine, or rebuild it"),
        ("E705", "`accelc verify` needs the recipe's repository, which is not here",
         "run it where the repository and its model code are"),
        ("E706", "the library or the parameters cannot be loaded (another accelc or TVM version?)",
         "rebuild the artifact with this accelc"),
        ("E707", "the artifact failed or crashed under emulation", "read the emulator's output shown; report it"),
        ("E708", "TVM's CUDA runtime cannot be loaded", "install an NVIDIA driver and the CUDA 13 runtime"),
        ("E709", "this GPU can run none of the artifact's device code",
         "rebuild for a target whose cuda_archs include this GPU"),
        ("E710", "the signing key is too short, or a signed manifest is updated without it",
         "use a key of 32 random bytes in ACCELC_SIGNING_KEY"),
        ("E711", "a signing key is set and the artifact is unsigned",
         "rebuild it with the key set, or load it without a key"),
        ("E712", "the artifact's signature is malformed or does not match",
         "rebuild it, or copy it again from the build that signed it")),
    "InputError": (
        ("E800", "the inputs do not fit the artifact", "pass what `accelc inspect` lists"),
        ("E801", "wrong input names or count, or an unknown output name",
         "pass the inputs the artifact lists, by position or by name"),
        ("E802", "an input's shape, batch size or nesting is wrong", "give the listed shape, batch dimension first"),
        ("E803", "an input's dtype or values do not fit the artifact's dtype", "convert it to the listed dtype"),
        ("E804", "a predictor or server option is out of range", "use a value the message allows"),
        ("E805", "an id is outside the table it indexes", "pass ids inside the input's listed range"),
        ("E806", "a float input holds NaN or infinity, and non-finite values are refused",
         "clean the input, or accept them (no reject_nonfinite / --reject-nonfinite)"),
        ("E807", "a request has more rows than the server takes", "split it, or raise --max-batch-rows"),
        ("E808", "an input is longer along a named dimension (seq) than the largest size built",
         "cut the input, or rebuild with a larger size in model.dims"),
        ("E810", "the request body is not valid JSON", "send a JSON body"),
        ("E811", "the request body does not have the protocol's shape",
         "send {\"inputs\": ...} to /predict, or a KServe v2 inference request"),
        ("E812", "the request body is larger than the server takes", "send fewer rows, or raise --max-body-bytes"),
        ("E813", "no such endpoint, method, model or version on this server", "use what GET /metadata lists"),
        ("E814", "the server cannot listen on the host and port", "choose another --port or --host"),
        ("E815", "the request body stalled longer than the body timeout",
         "send the body without long pauses, or raise --body-timeout")),
}

CODES: dict[str, Code] = {code: Code(code, error, summary, remedy, code.lower())
                          for error, rows in _TABLE.items() for code, summary, remedy in rows}
