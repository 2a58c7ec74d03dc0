"""Graph repairs: valid models that TVM 0.27's importer or torch.export's re-export get wrong build
and match PyTorch, and the build names the repairs it applied."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accelc import compile as compile_mod
from accelc.capture import export as capture
from accelc.config import recipe as recipe_mod
from accelc.runtime import predictor as runtime
from accelc.backends.tvm.lower import repairs
from accelc.errors import UnsupportedOpError
from tests.fixtures.helpers import Recording, make_repo, write_recipe

DECODER = """\
version: 1
name: {name}
model:
  entrypoint: tests.fixtures.hf_models:{name}
  inputs:
    - {{name: input_ids, shape: [batch, 16], dtype: int64, range: [0, 100]}}
  batch: [1, 2]
target: x86
verify: {{samples: 2}}
"""

CUMSUM = """\
version: 1
name: positions
model:
  entrypoint: tests.unit.backends.test_repairs:positions_from_mask
  inputs:
    - {name: ids, shape: [batch, 8], dtype: int64, range: [0, 3]}
  batch: [2]
target: x86
verify: {samples: 2}
"""


class PositionsFromMask(torch.nn.Module):
    """Positions of the non-padding tokens, as transformers computes them: a bool cumsum."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        return (mask.cumsum(-1) * mask).float() + (ids == 2).to(torch.int32).cumsum(-1).float()


def positions_from_mask() -> PositionsFromMask:
    return PositionsFromMask()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("repairs"))


def test_an_integer_cumsum_builds_and_matches_torch(repo):
    path = write_recipe(repo, CUMSUM, "cumsum.yaml")
    built = compile_mod.build(path, output=repo / "out-cumsum")
    assert built.report["status"] == "passed"
    applied = {r.repair: r.nodes for r in built.manifest.repairs}
    assert len(applied["integer_cumsum"]) == 2  # the bool and the int32 one
    ids = np.array([[0, 1, 1, 0, 2, 2, 1, 0], [2, 2, 2, 2, 0, 0, 0, 1]], np.int64)
    expected = positions_from_mask()(torch.from_numpy(ids)).numpy()
    np.testing.assert_array_equal(runtime.load(repo / "out-cumsum")(ids), expected)


def test_without_the_repair_tvm_cannot_compile_it(repo, monkeypatch):
    monkeypatch.setattr(repairs, "CONVERTERS", {})
    path = write_recipe(repo, CUMSUM.replace("name: positions", "name: unrepaired"), "unrepaired.yaml")
    with pytest.raises(UnsupportedOpError):  # E401: TVM keeps the bool dtype and cannot add bools
        compile_mod.build(path, output=repo / "out-unrepaired")


def test_views_become_reshapes_and_keep_values():
    class Heads(torch.nn.Module):
        def forward(self, x):  # [b, h, t, d] -> [b, t, h*d] -> rows: a view after a transpose
            y = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1).contiguous()
            return y.view(-1, y.shape[-1]) * 2
    x = torch.randn(2, 3, 4, 5)
    gm = torch.export.export(Heads(), (x,)).module()
    applied = repairs.repair_graph(gm)
    assert applied and applied[0]["repair"] == "views_as_reshapes"
    assert not any(n.target is torch.ops.aten.view.default for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), Heads()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoder_language_models_build_and_verify(repo, name):
    path = write_recipe(repo, DECODER.format(name=name), f"{name}.yaml")
    log = Recording()
    built = compile_mod.build(path, output=repo / f"out-{name}", logger=log.logger)
    lines = log.lines
    assert built.report["status"] == "passed", lines
    assert "integer_cumsum" in {r.repair for r in built.manifest.repairs}  # the causal mask
    assert any(line.strip().startswith("repair integer_cumsum") for line in lines)
    ids = np.random.default_rng(1).integers(0, 100, (2, 16))
    model = capture.build_model(recipe_mod.load(path))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(runtime.load(repo / f"out-{name}")(ids), expected, rtol=1e-3, atol=1e-4)


def test_an_op_tvm_cannot_compile_is_named_with_its_source_line(repo, monkeypatch, capsys):
    """TVM's message names no op here (an LLVM check on bools): the failing kernel is found alone."""
    monkeypatch.setattr(repairs, "CONVERTERS", {})
    path = write_recipe(repo, CUMSUM.replace("name: positions", "name: named-error"), "named-error.yaml")
    with pytest.raises(UnsupportedOpError) as info:
        compile_mod.build(path, output=repo / "out-named-error")
    located = [p for p in info.value.problems if p.message.startswith("TVM failed to compile op")]
    assert located, info.value.format()  # the multiply of the (bool) cumsum: where LLVM gives up
    assert all(p.location.startswith("node ") and "test_repairs.py:" in p.location for p in located), \
        info.value.format()
