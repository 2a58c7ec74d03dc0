"""The model zoo of the pass tests captures and matches eager PyTorch."""
from __future__ import annotations

import torch

from tests.fixtures.pass_models import MODELS, build, export


def test_models_capture_and_match_eager():
    for name in MODELS:
        model, inputs = build(name)
        gm = export(model, inputs)
        torch.testing.assert_close(gm(*inputs), model(*inputs), rtol=0, atol=0)
