"""Model entrypoint + weights -> eager nn.Module -> torch.export -> fx.GraphModule.

The GraphModule (ATen ops, parameters as get_attr, nn_module_stack kept in node.meta)
is what passes rewrite; the eager module stays as the verifier's reference.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from accelc.errors import ModelError, did_you_mean
from accelc.config.recipe import InputSpec, LoadedRecipe

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int8": torch.int8,
                "uint8": torch.uint8, "bool": torch.bool}


@dataclass
class Captured:
    model: torch.nn.Module  # the original eager model, eval mode
    graph: torch.fx.GraphModule  # what passes rewrite
    example_inputs: tuple
    dynamic_shapes: tuple | None
    output_names: list[str]
    output_dims: list[dict[int, str]] = field(default_factory=list)  # per output: axis -> named dim it follows


def import_entrypoint(spec: str, root: Path, where: str, field: str = "model.entrypoint"):
    """Import 'package.module:callable' with the recipe's repository first on sys.path.

    `field` names the recipe field that holds `spec` (model.entrypoint, data.samples, ...)."""
    module_name, _, attr = spec.partition(":")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # any import-time failure of user code is a user error
        raise ModelError(f"cannot import '{module_name}': {type(exc).__name__}: {_first_line(exc)}"
                         f"{_raised_at(exc, root)}", code="E300", location=where, field=field) from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ModelError(f"module '{module_name}' has no attribute '{attr}'", code="E300", location=where,
                         field=field, hint=did_you_mean(attr, names))
    if not callable(getattr(module, attr)):
        raise ModelError(f"'{spec}' is a {type(getattr(module, attr)).__name__}, not a callable", code="E300",
                         location=where, field=field)
    return getattr(module, attr)


def _raised_at(exc: BaseException, root: Path) -> str:
    """' (raised at FILE:LINE)' for the innermost frame in the user's repository, so that an error in
    an entrypoint points at the user's line rather than at accelc or a library."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:  # raised by the compiler: the bad line is not a frame
        frames.append(traceback.FrameSummary(exc.filename, exc.lineno or 0, "<module>"))
    root, ours = root.resolve(), Path(__file__).resolve().parents[1]
    for frame in reversed(frames):
        path = Path(os.path.abspath(frame.filename))  # as imported (through the repository's own links)
        if (path.is_relative_to(root) and not path.resolve().is_relative_to(ours)
                and "site-packages" not in path.parts):
            return f" (raised at {_shown(path, root)}:{frame.lineno})"
    return ""


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path.relative_to(root))


def build_model(loaded: LoadedRecipe) -> torch.nn.Module:
    section = loaded.recipe.model
    if section.huggingface is not None:
        from accelc.capture import huggingface
        return huggingface.build(loaded)
    where = loaded.where("model", "entrypoint")
    factory = import_entrypoint(section.entrypoint, loaded.root, where)
    try:
        model = factory(**section.kwargs)
    except (Exception, SystemExit) as exc:
        raise ModelError(f"entrypoint '{section.entrypoint}' failed: {type(exc).__name__}: {exc}"
                         f"{_raised_at(exc, loaded.root)}", code="E300", location=where,
                         field="model.entrypoint") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"entrypoint '{section.entrypoint}' returned {type(model).__name__}, not an nn.Module",
                         code="E301", location=where, field="model.entrypoint")
    if section.weights:
        load_weights(model, loaded.resolve(section.weights, "model", "weights"), loaded.where("model", "weights"))
    return model.eval()


def load_weights(model: torch.nn.Module, path: Path, where: str) -> None:
    """Load a state dict without pickle: safetensors, or torch.load(weights_only=True)."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}", code="E302", location=where, field="model.weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        elif path.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelError(f"unknown weights format '{path.suffix}'", code="E302", location=where,
                             field="model.weights", hint="use .safetensors (preferred) or .pt")
    except ModelError:
        raise
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # damaged, or not a torch file at all
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            raise ModelError(f"cannot read weights {path.name}: not a PyTorch weights file"
                             f"{f' ({detail[1].strip()[:200]})' if detail else ''}", code="E302", location=where,
                             field="model.weights") from None
        # torch's own advice (weights_only=False) would run the file's code
        raise ModelError(f"cannot read weights {path.name}: it holds pickled Python objects besides tensors, and "
                         "accelc never unpickles "
                         "them (loading such a file can run any code in it)", code="E302", location=where,
                         field="model.weights", hint=f"if you trust the file, convert it once to safetensors: "
                         f"python -c \"import torch; from safetensors.torch import save_file; save_file(torch.load("
                         f"'{path.name}', weights_only=False), '{path.stem}.safetensors')\" (a state_dict; "
                         "for a whole pickled model use model.state_dict())") from None
    except Exception as exc:
        raise ModelError(f"cannot read weights {path.name}: {exc}", code="E302", location=where,
                         field="model.weights") from None
    _check_state(model, state, where)
    model.load_state_dict(state, strict=True)


def _check_state(model: torch.nn.Module, state: dict, where: str) -> None:
    expected = model.state_dict()
    lines = [f"missing: {k}" for k in expected if k not in state]
    lines += [f"unexpected: {k}" for k in state if k not in expected]
    lines += [f"{k}: file has {tuple(state[k].shape)}, model has {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if lines:
        shown = "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")
        raise ModelError(f"weights do not fit the model: {shown}", code="E303", location=where,
                         field="model.weights")


def random_inputs(specs: list[InputSpec], batch: int, seed: int, ranges: dict | None = None,
                  sizes: dict[str, int] | None = None) -> tuple[np.ndarray, ...]:
    """Seeded sample inputs from the input specs (normal for floats, uniform ints in `range`; an
    input named in `ranges` uses that [low, high) instead: the build's, from the model's tables),
    at `sizes` for the named dimensions (default: their largest)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = spec.concrete(batch, sizes or largest_sizes(specs_dims(specs)))
        bounds = (ranges or {}).get(spec.name) or spec.range
        if spec.dtype.startswith(("float", "bfloat")):
            arr = rng.standard_normal(shape, dtype=np.float32)
            if bounds:
                arr = rng.uniform(bounds[0], bounds[1], shape).astype(np.float32)
        elif spec.dtype == "bool":
            arr = rng.integers(0, 2, shape).astype(bool)
        else:
            low, high = bounds or (0, 10)
            arr = rng.integers(int(low), int(high), shape).astype(spec.dtype)
        arrays.append(arr)
    return tuple(arrays)


def specs_dims(specs: list[InputSpec]) -> set[str]:
    """The named dimensions (besides batch) the inputs use."""
    return {d for spec in specs for d in spec.shape if isinstance(d, str) and d != "batch"}


def largest_sizes(names, dims: dict | None = None) -> dict[str, int]:
    """A size per named dimension: the largest built (`dims`: the recipe's model.dims), else 2."""
    return {name: dims[name].sizes[-1] if dims and name in dims else 2 for name in names}


def to_torch(arrays) -> tuple:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def run_eager(model: torch.nn.Module, arrays) -> list[np.ndarray]:
    """Run a model on numpy inputs; outputs flattened to a list of numpy arrays."""
    with torch.no_grad():
        out = model(*to_torch(arrays))
    return [t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy() for t in flatten(out)]


def eager_runner(model: torch.nn.Module, specs: list[InputSpec], sizes: list[int]):
    """run_eager as the artifact sees the model. Built for batch 1 only, the capture is static: its
    reshapes hold the batch size 1 (often the model's too), and the runtime serves a larger batch
    as batch-1 calls; the reference then runs the same way, row by row."""
    batched = ["batch" in spec.shape for spec in specs]
    if max(sizes) > 1 or not any(batched):
        return lambda arrays: run_eager(model, arrays)

    def by_rows(arrays) -> list[np.ndarray]:
        rows = next(a.shape[0] for a, b in zip(arrays, batched) if b)
        parts = [run_eager(model, [a[i:i + 1] if b else a for a, b in zip(arrays, batched)]) for i in range(rows)]
        return [np.concatenate(outs) if outs[0].ndim and outs[0].shape[0] == 1 else outs[0] for outs in zip(*parts)]
    return by_rows


class OutputTypeError(TypeError):
    """A model returned something other than tensors: the model's fault, not the inputs'."""


def output_names(out) -> list[str]:
    """A name per tensor of flatten(out): dict and ModelOutput keys ('logits', 'hidden.0'), output0,
    output1, ... for positions, output0 for a single tensor."""
    names = _names(out, "")
    return ["output0"] if names == [""] else names


def _names(out, path: str) -> list[str]:
    if isinstance(out, torch.Tensor):
        return [path]
    if isinstance(out, (tuple, list)):
        return [n for i, item in enumerate(out) for n in _names(item, f"{path}.{i}" if path else f"output{i}")]
    if isinstance(out, dict):
        return [n for key, value in out.items() for n in _names(value, f"{path}.{key}" if path else str(key))]
    raise OutputTypeError(f"got {type(out).__name__}")


def flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flatten(item)]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten(v)]
    raise OutputTypeError(f"got {type(out).__name__}")


def capture(loaded: LoadedRecipe, model: torch.nn.Module | None = None) -> Captured:
    """Build the model (unless given) and capture it with torch.export. The batch dimension is
    symbolic (export specialises sizes 0 and 1, so it traces at 2) even for recipes built for batch 1
    only, since the passes calibrate and score on batches of samples; a model that runs at batch 1
    only is captured static, and `graph.meta["accelc_rows"]` says it takes one row per call."""
    recipe = loaded.recipe
    model = model if model is not None else build_model(loaded)
    batched = any("batch" in s.shape for s in recipe.model.inputs)
    if batched and max(recipe.model.batch) == 1:
        try:
            return _capture_at(loaded, model, 2, dynamic=True)
        except ModelError:
            captured = _capture_at(loaded, model, 1, dynamic=False)
            captured.graph.meta["accelc_rows"] = 1
            return captured
    return _capture_at(loaded, model, 2 if batched and max(recipe.model.batch) > 1 else 1, dynamic=batched)


def _capture_at(loaded: LoadedRecipe, model: torch.nn.Module, batch: int, dynamic: bool) -> Captured:
    recipe = loaded.recipe
    dims = recipe.model.dims
    sizes = {name: max(2, dim.sizes[0]) for name, dim in dims.items()}  # symbolic: export specialises 1
    example = _example(loaded, batch, sizes)
    where = loaded.where("model", "inputs")
    try:
        with torch.no_grad():
            names = output_names(model(*to_torch(example)))  # flattens, as every later call does
    except OutputTypeError as exc:
        raise ModelError(f"the model must return tensors (or tuples, lists, dicts of them): {exc}", code="E306",
                         location=loaded.where("model", "entrypoint"), field="model.entrypoint") from None
    except Exception as exc:
        shapes = ", ".join(f"{s.name}{list(s.concrete(batch, sizes))}:{s.dtype}" for s in recipe.model.inputs)
        ids = [s.name for s in recipe.model.inputs if s.dtype.startswith(("int", "uint"))]
        hint = (f"integer inputs ({', '.join(ids)}) are sampled from their `range` ([0, 10) if none is declared); "
                "declare one that fits the model's tables" if ids and isinstance(exc, IndexError) else None)
        raise ModelError(f"the model fails on inputs {shapes}: {type(exc).__name__}: {_first_line(exc)}",
                         code="E304", location=where, field="model.inputs", hint=hint) from None
    dynamic = _for_signature(model, _dynamic_shapes(recipe.model.inputs, recipe.model.batch if dynamic else None,
                                                    dims))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, to_torch(example), dynamic_shapes=dynamic, strict=False)
    except Exception as exc:
        raise ModelError(f"torch.export cannot capture the model: {type(exc).__name__}: {_first_line(exc)}",
                         code="E305", location=loaded.where("model", "entrypoint"), field="model.entrypoint",
                         hint="the model must be traceable by torch.export (no data-dependent Python control flow)"
                         ) from None
    graph = program.module()
    drop_guards(graph)
    _explicit_conv_padding(graph)
    from accelc.capture.dims import output_dims
    out_dims = output_dims(graph, recipe.model.inputs, names, loaded.where("model", "dims")) if dims else []
    return Captured(model, graph, to_torch(example), dynamic, names, out_dims)


def _example(loaded: LoadedRecipe, batch: int, sizes: dict) -> tuple[np.ndarray, ...]:
    """Inputs to capture with: the recipe's data.samples where it has them (values some models need,
    e.g. EmbeddingBag's rising offsets), in the dtypes random_inputs gives; else random ones."""
    from accelc.verify import samples
    specs, source = loaded.recipe.model.inputs, None if sizes else samples.source(loaded)
    if source is None:
        return random_inputs(specs, batch, loaded.recipe.verify.seed, sizes=sizes)
    return tuple(np.asarray(a, np.float32 if s.dtype.startswith(("float", "bfloat")) else s.dtype)
                 for s, a in zip(specs, source(batch, loaded.recipe.verify.seed)))


def _dynamic_shapes(specs: list[InputSpec], batch_sizes: list[int] | None, dims: dict):
    """torch.export Dims: the batch (when `batch_sizes` are given) and each named dimension."""
    ranges = {name: dim.sizes[-1] for name, dim in dims.items()}
    if batch_sizes is not None:
        ranges["batch"] = max(batch_sizes)
    symbols = {name: torch.export.Dim(name, min=1, max=max(top, 2)) for name, top in ranges.items()}
    shapes = tuple({axis: symbols[d] for axis, d in enumerate(s.shape) if d in symbols} or None for s in specs)
    return shapes if any(shapes) else None


def _for_signature(model: torch.nn.Module, dynamic):
    """torch.export wants the dims of a forward(x, *rest) nested as the signature is: (x, (rest...))."""
    if dynamic is None:
        return None
    params = list(inspect.signature(model.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    return dynamic if star is None else (*dynamic[:star], tuple(dynamic[star:]))


STRING_PADDED_CONVS = {torch.ops.aten.conv1d.padding: torch.ops.aten.conv1d.default,
                       torch.ops.aten.conv2d.padding: torch.ops.aten.conv2d.default,
                       torch.ops.aten.conv3d.padding: torch.ops.aten.conv3d.default}


def _explicit_conv_padding(gm: torch.fx.GraphModule) -> None:
    """Convolutions written with padding='same'/'valid' (EfficientNet's) as the overload with numbers,
    which the passes (fold, prune, quantize) know. 'same' with an odd total padding pads the extra
    row/column at the end, as PyTorch does, with an explicit pad before the convolution."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in STRING_PADDED_CONVS:
            continue
        x, weight, bias, stride, padding, dilation, groups = (list(node.args) + [None, 1, "valid", 1, 1][
            len(node.args) - 2:])[:7]
        kernel = weight.meta["val"].shape[2:]
        stride, dilation = (_per_dim(v, len(kernel)) for v in (stride, dilation))
        total = [0] * len(kernel) if padding == "valid" else [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = [t // 2 for t in total]
        if any(t % 2 for t in total):  # constant_pad_nd takes (left, right) pairs from the last dim
            ends = [bound for t in reversed(total) for bound in (t // 2, t - t // 2)]
            with gm.graph.inserting_before(node):
                x = gm.graph.call_function(torch.ops.aten.constant_pad_nd.default, (x, ends, 0.0))
                x.meta.update({k: node.meta[k] for k in ("nn_module_stack", "stack_trace") if k in node.meta})
                if "val" in x.args[0].meta:  # a fake tensor: the pass that quantizes the conv reads its shape
                    x.meta["val"] = torch.ops.aten.constant_pad_nd.default(x.args[0].meta["val"], ends, 0.0)
            pads = [0] * len(kernel)
        node.target, node.args = STRING_PADDED_CONVS[node.target], (x, weight, bias, stride, pads, dilation, groups)
        changed = True
    if changed:
        gm.recompile()


def _per_dim(value, dims: int) -> list[int]:
    return list(value) * (dims if len(value) == 1 else 1) if isinstance(value, (list, tuple)) else [value] * dims


def drop_guards(gm: torch.fx.GraphModule) -> None:
    """torch.export's input-guard submodule: we check shapes ourselves, the backends cannot import it."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target.startswith("_guards"):
            gm.graph.erase_node(node)
    gm.recompile()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def module_path(node) -> str:
    """Dotted module path of a node from nn_module_stack ('encoder.layers.0.linear1')."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return re.sub(r"^L\['self'\]\.?", "", path).replace("._modules['", ".").replace("']", "")


def source_line(node) -> str:
    """'file.py:LINE' of the user code that made a node, from its stack trace."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    user = [f for f in frames if "site-packages" not in f[0] and "/torch/" not in f[0]]
    file, line = (user or frames or [("", "")])[-1]
    return f"{Path(file).name}:{line}" if file else ""


def node_location(node) -> str:
    parts = [f"node {node.name}"]
    if module_path(node):
        parts.append(f"in {module_path(node)}")
    if source_line(node):
        parts.append(f"at {source_line(node)}")
    return " ".join(parts)
