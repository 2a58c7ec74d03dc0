"""int8 on trained weights: a small ResNet trained here on scikit-learn's digits (a few seeded
epochs), built with recipes/digits_cnn_int8.yaml (static int8, calibrated on training images),
keeps the held-out top-1 of the float32 model computed here in eager PyTorch within the recipe's
max_drop, and predicts the same class as the float model on almost every held-out image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from accelc.compile import build
from accelc.runtime import predictor as runtime
from examples.digits import data, train  # scikit-learn's digits: part of the dev extra
from tests.fixtures.helpers import ROOT, make_repo, write_recipe

RECIPE = ROOT / "recipes" / "digits_cnn_int8.yaml"
EPOCHS = 3  # ~98% held-out top-1 already; the committed weights train 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(eager float32 model, its held-out logits, artifact directory) for a freshly trained CNN."""
    model, _ = train.train_cnn(train.TrainConfig(epochs=EPOCHS, lr=3e-3), log=lambda line: None)
    repo = make_repo(tmp_path_factory.mktemp("digits"))
    (repo / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    train.save(model, repo / "cnn.safetensors")
    text = RECIPE.read_text().replace("weights: examples/digits/cnn.safetensors", "weights: cnn.safetensors")
    text = text.replace("batch: [1, 64]", "batch: [64]")  # one compiled function is enough here
    assert "weights: cnn.safetensors" in text and "batch: [64]" in text
    x, _ = data.validation_images()
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x)).numpy()
    return model, logits, build(write_recipe(repo, text, "digits_cnn_int8.yaml"), output=repo / "artifact")


def test_int8_artifact_keeps_held_out_top1_within_the_recipe_budget(trained):
    _, eager_logits, built = trained
    x, y = data.validation_images()
    eager_top1 = float(np.mean(eager_logits.argmax(1) == y))
    got = runtime.load(built.output)(x)
    int8_top1 = float(np.mean(got.argmax(1) == y))
    max_drop = yaml.safe_load(RECIPE.read_text())["verify"]["metric"]["max_drop"]
    assert eager_top1 > 0.95  # a trained model: the check below is about real weights
    assert eager_top1 - int8_top1 <= max_drop, (eager_top1, int8_top1)
    assert float(np.mean(got.argmax(1) == eager_logits.argmax(1))) >= 0.98  # same answer as float32
    (quantize,) = [p.stats for p in built.manifest.passes if p.kind == "quantize"]
    assert quantize["mode"] == "static" and sum(r["dtype"] == "int8" for r in quantize["layers"]) >= 8


def test_build_report_measures_the_same_top1_as_the_test(trained):
    """The build's own metric gate saw the same held-out examples and the same float32 accuracy."""
    _, eager_logits, built = trained
    _, y = data.validation_images()
    metric = built.report["metric"]
    assert metric["name"] == "top1" and metric["examples"] == len(y) and metric["passed"]
    assert metric["original"] == pytest.approx(float(np.mean(eager_logits.argmax(1) == y)), abs=1e-9)
