"""Outputs keep the names the model gives them: dict and ModelOutput keys, positions otherwise."""
from __future__ import annotations

import numpy as np
import torch

from accelc import compile as compile_mod
from accelc.capture import export as capture
from accelc.runtime import predictor as runtime
from tests.fixtures.helpers import make_repo, write_recipe
from tests.fixtures.models import named

RECIPE = """\
version: 1
name: named
model:
  entrypoint: tests.fixtures.models:named
  inputs:
    - {name: x, shape: [batch, 4], dtype: float32}
  batch: [2]
target: x86
verify: {samples: 2}
"""


def test_names_follow_the_output_structure():
    t = torch.zeros(1)
    assert capture.output_names(t) == ["output0"]
    assert capture.output_names((t, [t, t])) == ["output0", "output1.0", "output1.1"]
    assert capture.output_names({"logits": t, "past": {"k": t}}) == ["logits", "past.k"]
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    out = BaseModelOutputWithPooling(last_hidden_state=t, pooler_output=t)  # None fields are left out
    assert capture.output_names(out) == ["last_hidden_state", "pooler_output"]


def test_a_dict_output_builds_with_its_names(tmp_path):
    repo = make_repo(tmp_path)
    built = compile_mod.build(write_recipe(repo, RECIPE), output=repo / "out")
    assert [o.name for o in built.manifest.outputs] == ["logits", "hidden.0", "hidden.1"]
    assert list(dict.fromkeys(r["output"] for r in built.report["rows"])) == ["logits", "hidden.0", "hidden.1"]
    x = np.random.default_rng(0).standard_normal((2, 4), dtype=np.float32)
    with torch.no_grad():
        expected = named()(torch.from_numpy(x))
    logits, relu, double = runtime.load(repo / "out")(x)
    np.testing.assert_allclose(logits, expected["logits"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(double, expected["hidden"][1].numpy(), rtol=1e-5, atol=1e-6)
