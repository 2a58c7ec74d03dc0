"""model.huggingface: a transformers model named in the recipe instead of a Python entrypoint.

Loaded from a save_pretrained directory or the local Hugging Face cache, never downloaded; or
built from a config with seeded random weights. The recipe's inputs are passed by name, and the
model output's fields come back as named outputs (logits, last_hidden_state, ...).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from accelc.errors import ModelError
from accelc.config.recipe import HuggingFaceSource, LoadedRecipe

AUTO_CLASSES = {"feature-extraction": "AutoModel", "causal-lm": "AutoModelForCausalLM",
                "masked-lm": "AutoModelForMaskedLM", "seq2seq-lm": "AutoModelForSeq2SeqLM",
                "sequence-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification",
                "question-answering": "AutoModelForQuestionAnswering",
                "image-classification": "AutoModelForImageClassification",
                "audio-classification": "AutoModelForAudioClassification"}


class NamedInputs(nn.Module):
    """Positional inputs (the recipe's order) passed to the model by name; the output's fields as a dict."""

    def __init__(self, model: nn.Module, input_names: list[str], outputs: list[str] | None):
        super().__init__()
        self.model, self.input_names, self.outputs = model, list(input_names), outputs
        accepted = inspect.signature(model.forward).parameters
        # an inference graph of fixed length: no key/value cache to return and feed back
        self.extra = {"use_cache": False} if "use_cache" in accepted else {}

    def forward(self, *args):
        out = self.model(**dict(zip(self.input_names, args)), **self.extra, return_dict=True)
        fields = dict(out)
        if self.outputs is None:
            return fields
        return {name: fields[name] for name in self.outputs}


def build(loaded: LoadedRecipe) -> nn.Module:
    section = loaded.recipe.model
    source: HuggingFaceSource = section.huggingface
    where = lambda *field: loaded.where("model", "huggingface", *field)  # noqa: E731
    try:
        import transformers
    except ImportError:
        raise ModelError("model.huggingface needs the transformers package", code="E307", location=where(),
                         field="model.huggingface", hint="pip install transformers") from None
    auto = getattr(transformers, AUTO_CLASSES[source.task])
    try:
        model = _from_config(transformers, auto, source) if source.random_weights else \
            _pretrained(auto, _location(loaded, source, where), source)
    except ModelError:
        raise
    except (Exception, SystemExit) as exc:
        raise ModelError(f"transformers cannot load the model: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}", code="E307",
                         location=where("path" if source.path else "config"), field="model.huggingface") from None
    wrapped = NamedInputs(model.eval(), [spec.name for spec in section.inputs], source.outputs)
    _check_names(model, wrapped, source, where)
    return wrapped


def _from_config(transformers, auto, source: HuggingFaceSource) -> nn.Module:
    fields = dict(source.config)
    if source.path:
        config = transformers.AutoConfig.from_pretrained(source.path, local_files_only=True, **fields)
    else:
        config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    return auto.from_config(config)


def _pretrained(auto, location: str, source: HuggingFaceSource) -> nn.Module:
    return auto.from_pretrained(location, local_files_only=True, **source.config)


def _location(loaded: LoadedRecipe, source: HuggingFaceSource, where) -> str:
    """A directory of the repository, or a hub id (owner/name) for the local cache."""
    local = loaded.root / source.path
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{source.path} has no config.json (write it with model.save_pretrained)",
                             code="E302", location=where("path"), field="model.huggingface.path")
        return str(local)
    if Path(source.path).is_absolute() or source.path.startswith(".") or source.path.count("/") > 1:
        raise ModelError(f"no directory {source.path} in the repository", code="E302", location=where("path"),
                         field="model.huggingface.path")
    return source.path


def _check_names(model: nn.Module, wrapped: NamedInputs, source: HuggingFaceSource, where) -> None:
    """Input names the model does not take would only fail later, inside torch.export."""
    accepted = inspect.signature(model.forward).parameters
    unknown = [name for name in wrapped.input_names if name not in accepted]
    if unknown:
        known = [n for n, p in accepted.items() if p.kind is p.POSITIONAL_OR_KEYWORD][:8]
        raise ModelError(f"{type(model).__name__} takes no input(s) {unknown}; it takes {', '.join(known)}, ...",
                         code="E304", location=where(), field="model.inputs")
