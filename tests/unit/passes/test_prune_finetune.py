"""Fine-tuning after pruning: it learns from the recipe's training source, gradient accumulation
equals one large batch, sparsity masks survive training, and without data it says why it skipped."""
from __future__ import annotations

import textwrap

import pytest
import torch

from accelc.config import recipe as recipe_mod
from accelc.capture.export import import_entrypoint
from accelc.errors import PassError
from accelc.passes import PassContext
from accelc.passes.prune import Prune, PruneConfig
from tests.fixtures.helpers import Recording

from tests.fixtures.pass_models import captured

DATA = '''
import numpy as np

def _binary(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 12)).astype(np.float32)
    w = np.linspace(-1, 1, 12).astype(np.float32)
    return x, (x @ w > 0).astype(np.float32)

def binary_train():
    return _binary(1)

def binary_test():
    return _binary(2)

def image_train():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    return x, (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64) + 2 * (x[:, 1].mean(axis=(1, 2)) > 0)

def nan_labels():
    x, y = _binary(1)
    y[3] = np.nan
    return x, y

def overflowing():
    x, y = _binary(1)
    with np.errstate(over="ignore"):
        return x * np.float32(1e38), y
'''


def _load_repo(root, data: str = ""):
    """A real recipe whose repository holds the training data module (`data`: a recipe data line)."""
    (root / "ft_data_prune.py").write_text(DATA)
    (root / "r.yaml").write_text(textwrap.dedent("""\
        version: 1
        name: ft
        model:
          entrypoint: ft_model:build
          inputs:
            - {name: x, shape: [batch, 12]}
        """) + data)
    return recipe_mod.load(root / "r.yaml")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return _load_repo(tmp_path_factory.mktemp("ftrepo"))


def run(gm, inputs, loaded, logger=None, **config):
    cfg = PruneConfig(kind="prune", **config)
    return Prune(cfg).run(gm, PassContext(inputs, loaded, logger))


def accuracy(gm, loaded) -> float:
    x, y = import_entrypoint("ft_data_prune:binary_test", loaded.root, "test")()
    with torch.no_grad():
        return float(((gm(torch.from_numpy(x)).numpy().reshape(-1) > 0.5) == y).mean())


def test_finetune_recovers_accuracy(loaded):
    model, inputs, gm = captured("mlp")
    tuned = run(gm, inputs, loaded, method="l1_structured", amount=0.5,
                finetune={"steps": 80, "lr": 0.02, "accumulate": 2, "batch_size": 32,
                          "data": "ft_data_prune:binary_train"})
    report = tuned.stats["finetune"]
    assert report["status"] == "done" and report["examples"] == 512
    assert report["loss_last10"] < report["loss_first"]
    assert accuracy(tuned.graph, loaded) > 0.85  # the untrained MLP is at chance on this rule
    assert all(not p.requires_grad for p in tuned.graph.parameters())


def test_the_recipes_data_train_is_the_default_source(tmp_path):
    """`data.train` in the recipe feeds finetune when finetune.data is not given: the same training
    as naming the source explicitly."""
    with_train = _load_repo(tmp_path, 'data: {train: "ft_data_prune:binary_train"}\n')
    graphs = []
    for loaded, finetune in ((with_train, {}), (with_train, {"data": "ft_data_prune:binary_train"})):
        model, inputs, gm = captured("mlp")
        result = run(gm, inputs, loaded, method="l1_structured", amount=0.25,
                     finetune={"steps": 3, "lr": 0.01, "batch_size": 16, **finetune})
        assert result.stats["finetune"]["status"] == "done", result.stats["finetune"]
        graphs.append(result.graph)
    x = torch.randn(8, 12)
    torch.testing.assert_close(graphs[0](x), graphs[1](x), rtol=0, atol=0)


def test_gradient_accumulation_equals_one_big_batch(loaded):
    graphs = []
    for accumulate, batch in ((4, 16), (1, 64)):
        model, inputs, gm = captured("mlp")
        result = run(gm, inputs, loaded, method="l2_structured", amount=0.25,
                     finetune={"steps": 3, "lr": 0.01, "accumulate": accumulate, "batch_size": batch,
                               "data": "ft_data_prune:binary_train"})
        graphs.append(result.graph)
    x = torch.randn(8, 12)
    torch.testing.assert_close(graphs[0](x), graphs[1](x), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(graphs[1](x), captured("mlp")[0](x))  # training did move the weights


def test_cross_entropy_for_class_scores(loaded):
    model, inputs, gm = captured("cnn")
    result = run(gm, inputs, loaded, method="l1_structured", amount=0.5,
                 finetune={"steps": 10, "lr": 0.01, "batch_size": 8, "data": "ft_data_prune:image_train"})
    report = result.stats["finetune"]
    assert report["status"] == "done" and report["loss_last10"] < report["loss_first"]


def test_magnitude_masks_survive_finetune(loaded):
    model, inputs, gm = captured("mlp")
    result = run(gm, inputs, loaded, method="magnitude", amount=0.7,
                 finetune={"steps": 20, "lr": 0.05, "data": "ft_data_prune:binary_train"})
    for row in result.stats["layers"]:
        node = next(n for n in result.graph.graph.nodes if n.name == row["node"])
        weight = result.graph.get_parameter(node.args[1].target)
        assert int((weight == 0).sum()) == row["zeros_after"] > 0


def test_without_training_data_it_skips_with_a_note():
    model, inputs, gm = captured("mlp")
    log = Recording()
    result = run(gm, inputs, None, logger=log.logger, method="l1_structured", amount=0.5,
                 finetune={"steps": 10})
    assert result.changed
    assert result.stats["finetune"]["status"] == "skipped"
    assert "no training data" in result.stats["finetune"]["reason"]
    assert any("fine-tune skipped" in line for line in log.lines)


def test_bad_labels_and_diverging_loss_are_user_errors(loaded):
    for source, code, words, loss in (("nan_labels", "E451", "labels must be finite", "auto"),
                                      ("overflowing", "E452", "diverged", "auto")):
        model, inputs, gm = captured("mlp")
        with pytest.raises(PassError) as info:
            run(gm, inputs, loaded, method="l1_structured", amount=0.5,
                finetune={"steps": 5, "loss": loss, "data": f"ft_data_prune:{source}"})
        assert info.value.code == code and words in str(info.value)
