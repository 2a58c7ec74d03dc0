"""edu_churn model and training: the folded preprocessing equals the numpy pipeline, the committed
weights hold the training statistics and reproduce metrics.json, and training (kept tiny here)
is deterministic, accumulates gradients correctly and stops on a NaN loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from accelc.verify import metrics  # noqa: E402
from examples.edu_churn import data, preprocess, schema, train  # noqa: E402
from examples.edu_churn.model import ChurnModel, build_model  # noqa: E402
from tests.fixtures.edu_churn import HERE, WEIGHTS, edge_rows, numpy_pipeline  # noqa: E402

@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_file(str(WEIGHTS))


@pytest.fixture(scope="module")
def committed() -> ChurnModel:
    model = build_model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(WEIGHTS)).items()}, strict=True)
    return model.eval()


def test_folded_preprocessing_equals_numpy_on_raw_vectors_with_nans(committed, state):
    raw = np.concatenate([data.sample_inputs(500, seed=11), edge_rows()])
    assert np.isnan(raw).any(axis=1).mean() > 0.3
    stats = {k: state[f"preprocess.{k}"] for k in preprocess.STAT_KEYS}
    with torch.no_grad():
        folded = committed.preprocess(torch.from_numpy(raw)).numpy()
        probability = committed(torch.from_numpy(raw)).numpy()
    reference = preprocess.transform(raw, stats)
    assert np.isfinite(folded).all() and folded.shape == (len(raw), schema.FEATURES)
    np.testing.assert_allclose(folded, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(probability, numpy_pipeline(raw, state), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(folded[-6:-4, len(schema.NUMERIC):], 0)  # missing, negative codes: none


def test_committed_weights_hold_the_training_split_statistics(state):
    learnt = preprocess.fit(data.default_splits()["train"].raw)
    for key in preprocess.STAT_KEYS:
        np.testing.assert_allclose(state[f"preprocess.{key}"], learnt[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_committed_metrics_json_matches_the_committed_weights(committed):
    recorded = json.loads((HERE / "metrics.json").read_text())
    test = data.default_splits()["test"]
    with torch.no_grad():
        p = committed(torch.from_numpy(test.raw)).numpy()
    auc = metrics.auc(test.labels, p)
    assert auc >= 0.80 and recorded["test"]["auc"] >= 0.80
    assert auc == pytest.approx(recorded["test"]["auc"], abs=1e-5)
    assert metrics.accuracy(test.labels, p) == pytest.approx(recorded["test"]["accuracy"], abs=1e-5)


TINY = train.TrainConfig(learners=400, hidden=(16,), micro_batch=16, accumulate=2, max_epochs=3, patience=1)


def test_tiny_training_is_deterministic_and_saves_a_loadable_pipeline(tmp_path):
    first, second = train.train(TINY, log=lambda line: None), train.train(TINY, log=lambda line: None)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    weights, metrics_path = train.save(first, tmp_path)
    saved = json.loads(metrics_path.read_text())
    assert set(saved["test"]) >= {"auc", "accuracy", "logloss"} and saved["data"]["train_rows"] > 200
    assert 1 <= saved["best_epoch"] <= saved["epochs_run"] <= TINY.max_epochs
    model = build_model(hidden=TINY.hidden)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(weights)).items()}, strict=True)
    raw = data.generate(400).raw[:32]
    with torch.no_grad():
        np.testing.assert_array_equal(model.eval()(torch.from_numpy(raw)).numpy(),
                                      first.model(torch.from_numpy(raw)).numpy())


def test_gradient_accumulation_equals_one_big_batch():
    """4 micro-batches of 8 summed into one Adam step == one batch of 32 (no dropout)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, schema.FEATURES), (torch.rand(32) < 0.3).float()
    results = []
    for micro, accumulate in ((8, 4), (32, 1)):
        torch.manual_seed(1)
        model = ChurnModel(hidden=(8,), dropout=0.0)
        optimizer = torch.optim.Adam(model.mlp.parameters(), lr=0.01)
        cfg = train.TrainConfig(micro_batch=micro, accumulate=accumulate)
        train._epoch(model, optimizer, x, y, cfg, torch.Generator().manual_seed(0), epoch=1)
        results.append([p.detach().clone() for p in model.mlp.parameters()])
    torch.manual_seed(1)
    before = ChurnModel(hidden=(8,), dropout=0.0)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(results[0][0], before.mlp.body[0].weight)  # a step was taken


def test_nan_loss_stops_training_with_a_clear_message(tmp_path, monkeypatch, capsys):
    real_fit = preprocess.fit

    def broken_fit(raw):  # a zero std turns the features into inf/nan
        return {**real_fit(raw), "std": np.zeros(preprocess.N, np.float32)}

    monkeypatch.setattr(train.preprocess, "fit", broken_fit)
    code = train.main(["--learners", "300", "--max-epochs", "1", "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "training diverged: the loss became nan at epoch 1, step 0" in err
    assert not (tmp_path / "out").exists()
