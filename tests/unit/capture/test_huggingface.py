"""model.huggingface: a transformers model named in the recipe (a save_pretrained directory, or a
config with random weights), inputs by name, output fields by name; bad sources are coded errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from accelc import compile as compile_mod
from accelc.capture import export as capture
from accelc.config import recipe as recipe_mod
from accelc.runtime import predictor as runtime
from accelc.errors import ModelError, RecipeError
from tests.fixtures.helpers import assert_cli_user_error, make_repo, write_recipe

CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64, num_labels=3)

RECIPE = """\
version: 1
name: classifier
model:
  huggingface:
{source}
  inputs:
    - {{name: input_ids, shape: [batch, 16], dtype: int64, range: [0, 100]}}
    - {{name: attention_mask, shape: [batch, 16], dtype: int64, range: [0, 2]}}
  batch: [1, 2]
target: x86
verify: {{samples: 2}}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("hf"))
    torch.manual_seed(5)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG))
    model.save_pretrained(repo / "tiny-bert")
    return repo


def recipe_with(repo, source: str, name: str = "recipe.yaml"):
    return write_recipe(repo, RECIPE.format(source=source), name)


def test_a_saved_model_builds_verifies_and_names_its_outputs(repo):
    path = recipe_with(repo, "    path: tiny-bert\n    task: sequence-classification")
    built = compile_mod.build(path, output=repo / "out")
    assert built.report["status"] == "passed"
    assert [o.name for o in built.manifest.outputs] == ["logits"]
    ids = np.random.default_rng(0).integers(0, 100, (2, 16))
    mask = np.ones((2, 16), np.int64)
    mask[1, 10:] = 0  # padding in the second row
    reference = transformers.BertForSequenceClassification.from_pretrained(repo / "tiny-bert").eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(runtime.load(repo / "out")(input_ids=ids, attention_mask=mask), expected,
                               rtol=1e-4, atol=1e-5)


def test_random_weights_from_a_config_only(repo):
    fields = ", ".join(f"{k}: {v}" for k, v in {**CONFIG, "model_type": "bert"}.items())
    path = recipe_with(repo, f"    random_weights: true\n    config: {{{fields}}}\n    outputs: [pooler_output]",
                       "random.yaml")
    model = capture.build_model(recipe_mod.load(path))
    ids = torch.randint(0, 100, (2, 16))
    out = model(ids, torch.ones_like(ids))
    assert list(out) == ["pooler_output"] and out["pooler_output"].shape == (2, 32)
    assert capture.build_model(recipe_mod.load(path))(ids, torch.ones_like(ids))["pooler_output"].equal(
        out["pooler_output"])  # seeded: the same weights every build


@pytest.mark.parametrize("source, code, needle", [
    ("    path: no-such-dir/x/y", "E302", "no directory"),
    ("    path: tests", "E302", "no config.json"),
    ("    path: someone/not-in-cache", "E307", "cannot load"),
    ("    task: sequence-classification", "E102", "give a path"),
])
def test_bad_sources_are_coded_errors(repo, capsys, source, code, needle):
    path = recipe_with(repo, source, "bad.yaml")
    with pytest.raises((ModelError, RecipeError)) as info:
        capture.build_model(recipe_mod.load(path))
    assert info.value.code == code and needle in info.value.problems[0].message, info.value.format()
    assert_cli_user_error(["build", str(path), "--output", str(repo / "bad-out")], capsys, code)


def test_an_input_the_model_does_not_take(repo):
    path = recipe_with(repo, "    path: tiny-bert", "names.yaml")
    text = path.read_text().replace("name: attention_mask", "name: pixel_values")
    path.write_text(text)
    with pytest.raises(ModelError) as info:
        capture.build_model(recipe_mod.load(path))
    assert info.value.code == "E304" and "pixel_values" in info.value.problems[0].message


def test_entrypoint_and_huggingface_are_exclusive(repo):
    path = recipe_with(repo, "    path: tiny-bert", "both.yaml")
    path.write_text(path.read_text().replace("model:\n", "model:\n  entrypoint: tests.fixtures.models:tiny_mlp\n"))
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    assert "one of them" in info.value.problems[0].message
