"""capture: every way a model entrypoint, its weights or its inputs can be wrong is one coded
ModelError at the recipe field's position, and the CLI prints it without a traceback (exit 2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from accelc.capture import export as capture
from accelc.config import recipe
from accelc.errors import ModelError
from tests.fixtures.helpers import TINY_RECIPE, assert_cli_user_error, at, make_repo, write_recipe
from tests.fixtures.models import tiny_mlp

ENTRYPOINT = "tests.fixtures.models:tiny_mlp"


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path)


def failing(repo, text: str, capsys, code: str, needle: str, field: str) -> ModelError:
    """Capture must fail with `code` at `needle`; the CLI build too, writing nothing."""
    path = write_recipe(repo, text)
    with pytest.raises(ModelError) as info:
        capture.capture(recipe.load(path))
    problem = info.value.problems[0]
    assert (problem.code, problem.field) == (code, field), problem.format()
    assert problem.location == at(path, text, needle)
    assert_cli_user_error(["build", path, "--output", repo / "out"], capsys, code)
    assert not (repo / "out").exists()
    return info.value


def with_entrypoint(spec: str) -> str:
    return TINY_RECIPE.replace(ENTRYPOINT, spec)


def with_weights(name: str) -> str:
    return TINY_RECIPE.replace("  inputs:", f"  weights: {name}\n  inputs:")


def test_good_recipe_captures_an_fx_graph_that_matches_eager(repo):
    captured = capture.capture(recipe.load(write_recipe(repo, TINY_RECIPE)))
    assert isinstance(captured.graph, torch.fx.GraphModule)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(capture.flatten(captured.graph(x))[0], tiny_mlp()(x))
    stacks = [n.meta.get("nn_module_stack") for n in captured.graph.graph.nodes if n.op == "call_function"]
    assert any(stacks) and captured.output_names == ["output0"]


def test_module_that_does_not_exist(repo, capsys):
    exc = failing(repo, with_entrypoint("tests.fixtures.nothere:build"), capsys, "E300", "tests.fixtures",
                  "model.entrypoint")
    assert "ModuleNotFoundError" in exc.problems[0].message


def test_module_that_fails_to_import(repo, capsys):
    exc = failing(repo, with_entrypoint("tests.fixtures.broken_import:build"), capsys, "E300", "tests.fixtures",
                  "model.entrypoint")
    assert "some_private_dependency" in exc.problems[0].message


def test_missing_attribute_gets_did_you_mean(repo, capsys):
    exc = failing(repo, with_entrypoint("tests.fixtures.models:tiny_mpl"), capsys, "E300", "tests.fixtures",
                  "model.entrypoint")
    assert exc.problems[0].hint == "did you mean 'tiny_mlp'?"


def test_attribute_that_is_not_callable(repo, capsys):
    exc = failing(repo, with_entrypoint("tests.fixtures.models:annotations"), capsys, "E300", "tests.fixtures",
                  "model.entrypoint")
    assert "not a callable" in exc.problems[0].message


def test_entrypoint_returning_a_non_module(repo, capsys):
    exc = failing(repo, with_entrypoint("tests.fixtures.models:not_a_module"), capsys, "E301", "tests.fixtures",
                  "model.entrypoint")
    assert "returned dict" in exc.problems[0].message


def test_factory_that_raises(repo, capsys):
    exc = failing(repo, with_entrypoint("tests.fixtures.models:raising_factory"), capsys, "E300",
                  "tests.fixtures", "model.entrypoint")
    assert "ValueError: hidden size must be positive" in exc.problems[0].message


def test_bad_kwargs(repo, capsys):
    text = TINY_RECIPE.replace("  inputs:", "  kwargs: {hiden: 3}\n  inputs:")
    exc = failing(repo, text, capsys, "E300", "tests.fixtures", "model.entrypoint")
    assert "hiden" in exc.problems[0].message


def test_model_returning_a_non_tensor(repo, capsys):
    exc = failing(repo, with_entrypoint("tests.fixtures.models:returns_string"), capsys, "E306",
                  "tests.fixtures", "model.entrypoint")
    assert "must return tensors" in exc.problems[0].message


def test_input_shape_that_does_not_fit_the_model(repo, capsys):
    text = TINY_RECIPE.replace("[batch, 4]", "[batch, 5]")
    exc = failing(repo, text, capsys, "E304", "- {name: x", "model.inputs")
    assert "x[2, 5]:float32" in exc.problems[0].message  # captured at batch 2: export specialises 1
    assert "mat1 and mat2" in exc.problems[0].message


def test_weights_file_missing(repo, capsys):
    exc = failing(repo, with_weights("missing.safetensors"), capsys, "E302", "missing.safetensors",
                  "model.weights")
    assert "not found" in exc.problems[0].message


def test_weights_with_mismatched_shapes(repo, capsys):
    state = {k: v.clone() for k, v in tiny_mlp().state_dict().items()}
    state["fc1.weight"] = torch.zeros(3, 4)
    state["extra.bias"] = torch.zeros(1)
    del state["fc2.bias"]
    save_file(state, str(repo / "w.safetensors"))
    exc = failing(repo, with_weights("w.safetensors"), capsys, "E303", "w.safetensors", "model.weights")
    message = exc.problems[0].message
    assert "fc1.weight: file has (3, 4), model has (8, 4)" in message
    assert "missing: fc2.bias" in message and "unexpected: extra.bias" in message


def test_weights_with_unknown_suffix(repo, capsys):
    (repo / "w.npz").write_bytes(b"PK")
    exc = failing(repo, with_weights("w.npz"), capsys, "E302", "w.npz", "model.weights")
    assert "'.npz'" in exc.problems[0].message and ".safetensors" in exc.problems[0].hint


def test_weights_file_that_is_garbage(repo, capsys):
    (repo / "w.safetensors").write_bytes(b"\x00garbage")
    failing(repo, with_weights("w.safetensors"), capsys, "E302", "w.safetensors", "model.weights")


def test_pickled_weights_are_not_unpickled(repo, capsys):
    class Evil:  # anything that is not a tensor is refused by weights_only=True
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"fc1.weight": Evil()}, repo / "w.pt")
    exc = failing(repo, with_weights("w.pt"), capsys, "E302", "w.pt", "model.weights")
    assert "pwned" not in capsys.readouterr().out
    assert "cannot read weights" in exc.problems[0].message


def test_good_weights_are_loaded(repo):
    model = tiny_mlp(seed=7)
    save_file(model.state_dict(), str(repo / "w.safetensors"))
    built = capture.build_model(recipe.load(write_recipe(repo, with_weights("w.safetensors"))))
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(built(x), model(x))  # seed 0 by default: only the file makes them equal


def test_random_inputs_follow_the_specs():
    specs = recipe.InputSpec(name="ids", shape=["batch", 3], dtype="int64", range=(5, 9)), \
        recipe.InputSpec(name="x", shape=[2, "batch"], dtype="float32")
    ids, x = capture.random_inputs(list(specs), 4, seed=1)
    assert ids.dtype == np.int64 and ids.shape == (4, 3) and ids.min() >= 5 and ids.max() < 9
    assert x.dtype == np.float32 and x.shape == (2, 4)
    again = capture.random_inputs(list(specs), 4, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((ids, x), again))


USER_MODULE = '''\
import torch


def helper(width):
    raise ValueError(f"width {width} is not supported")  # line 5


def build(width=4):
    return helper(width)
'''


@pytest.mark.parametrize("body, needle", [
    (USER_MODULE, "userpkg/model.py:5"),  # the innermost frame in the user's code, not accelc's
    ("import torch\n\nx = 1 / 0\n\ndef build():\n    pass\n", "userpkg/model.py:3"),  # fails at import
    ("def build(:\n    pass\n", "userpkg/model.py:1"),  # a syntax error has no frame of its own
])
def test_an_entrypoint_that_raises_points_at_the_users_line(repo, capsys, body, needle):
    package = f"userpkg_{abs(hash(body))}"  # a module name of its own: imported modules stay in sys.modules
    (repo / package).mkdir()
    (repo / package / "__init__.py").write_text("")
    (repo / package / "model.py").write_text(body)
    exc = failing(repo, with_entrypoint(f"{package}.model:build"), capsys, "E300", package, "model.entrypoint")
    message = exc.problems[0].message.replace(str(repo) + "/", "").replace(package, "userpkg")
    assert f"(raised at {needle})" in message, message


def test_pickled_weights_say_how_to_convert_them(repo, capsys):
    torch.save({"fc1": torch.nn.Linear(4, 8)}, repo / "w.pt")  # modules, as torch.save(model) writes
    exc = failing(repo, with_weights("w.pt"), capsys, "E302", "w.pt", "model.weights")
    problem = exc.problems[0]
    assert "weights_only=False" not in problem.message and "never unpickles" in problem.message
    assert "safetensors" in problem.hint and "save_file" in problem.hint


def test_a_damaged_torch_file_is_not_called_a_pickle_of_objects(repo, capsys):
    (repo / "w.pt").write_bytes(b"\x80\x02garbage that is no pickle")
    exc = failing(repo, with_weights("w.pt"), capsys, "E302", "w.pt", "model.weights")
    assert "never unpickles" not in exc.problems[0].message and "not a PyTorch weights file" in exc.problems[0].message


class StarArgs(torch.nn.Module):
    """forward(*args), as generic wrappers around Hugging Face models are written."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, *args):
        return self.fc(args[0])


def star_args():
    torch.manual_seed(0)
    return StarArgs()


def test_a_forward_with_star_args_captures_with_a_dynamic_batch(repo):
    text = with_entrypoint("tests.unit.capture.test_capture_errors:star_args")
    captured = capture.capture(recipe.load(write_recipe(repo, text)))
    x = torch.randn(3, 4)  # neither of the sizes captured (batch: [1, 4] exports at 2)
    with torch.no_grad():
        torch.testing.assert_close(capture.flatten(captured.graph(x))[0], star_args()(x))
