"""Sequence-length buckets (model.dims): a BERT-style encoder built at seq 16 and 32 serves any
length up to 32, checked against eager PyTorch on the unpadded inputs at the real positions; a
longer input is one coded error; a model that sees the padding fails verification with E602."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from accelc.artifact.manifest import Manifest
from accelc.compile import build
from accelc.errors import InputError, VerificationError
from accelc.runtime import predictor as runtime
from tests.fixtures.helpers import ROOT, make_repo, write_recipe
from tests.fixtures.seq_models import bert

RECIPE = ROOT / "recipes" / "bert_seq_buckets.yaml"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build(RECIPE, output=tmp_path_factory.mktemp("bert") / "artifact")


def inputs(batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids with a real length per row (row 0 the whole length), padded after it with 0s."""
    rng = np.random.default_rng(seed)
    ends = np.concatenate([[length], rng.integers(1, length + 1, batch - 1)])
    real = np.arange(length)[None, :] < ends[:, None]
    ids = np.where(real, rng.integers(1, 100, (batch, length)), 0).astype(np.int64)
    types = np.where(real, rng.integers(0, 2, (batch, length)), 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": real.astype(np.int64), "token_type_ids": types}


def test_the_manifest_records_buckets_and_the_axes_that_follow_them(artifact):
    m = artifact.manifest
    assert artifact.report["status"] == "passed"
    (seq,) = m.dims
    assert (seq.name, seq.sizes, seq.mask, seq.pad) == ("seq", (16, 32), "attention_mask",
                                                        {"input_ids": 0, "token_type_ids": 0})
    assert [o.shape for o in m.outputs] == [("batch", "seq", 32), ("batch", 32)]
    assert m.by_bucket == {(16,): {1: "main_b1_s16", 2: "main_b2_s16"}, (32,): {1: "main_b1_s32", 2: "main_b2_s32"}}
    assert {row["bucket"]["seq"] for row in artifact.report["rows"]} == {16, 32}
    written = json.loads((artifact.output / "manifest.json").read_text())
    assert Manifest.from_json(written) == m and Manifest.from_json(written).to_json() == written


@pytest.mark.parametrize("batch", [1, 3])  # 3 was not built: padded to 2 and split
@pytest.mark.parametrize("length", [5, 16, 20, 32])
def test_any_length_matches_eager_on_the_unpadded_inputs(artifact, length, batch):
    predictor, model = runtime.load(artifact.output), bert()
    arrays = inputs(batch, length, seed=length * 10 + batch)
    hidden, pooled = predictor(**arrays)
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    assert hidden.shape == (batch, length, 32) and pooled.shape == (batch, 32)
    real = arrays["attention_mask"].astype(bool)
    np.testing.assert_allclose(hidden[real], want.last_hidden_state.numpy()[real], atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(pooled, want.pooler_output.numpy(), atol=1e-4, rtol=1e-3)


def test_a_length_above_the_largest_bucket_is_one_coded_error(artifact):
    predictor = runtime.load(artifact.output)
    with pytest.raises(InputError) as info:
        predictor(**inputs(1, 33, seed=1))
    assert info.value.code == "E808"
    assert "input 'input_ids' has seq length 33; the largest built seq size is 32" in str(info.value)


def test_inputs_that_disagree_on_the_length(artifact):
    arrays = inputs(1, 8, seed=2)
    arrays["token_type_ids"] = arrays["token_type_ids"][:, :7]
    with pytest.raises(InputError) as info:
        runtime.load(artifact.output)(**arrays)
    assert info.value.code == "E802" and "disagree on the 'seq' length" in str(info.value)


def test_a_model_that_sees_the_padding_fails_verification(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = write_recipe(repo, """\
version: 1
name: centred
model:
  entrypoint: tests.fixtures.seq_models:centred
  inputs:
    - {name: x, shape: [batch, seq, 4], dtype: float32}
  batch: [2]
  dims:
    seq: {sizes: [4, 8], pad: {x: 0.0}}
target: x86
verify: {samples: 2}
""")
    with pytest.raises(VerificationError) as info:
        build(path, output=tmp_path / "out")
    assert info.value.code == "E602" and "no mask is declared, and the model sees the padding" in str(info.value)
    assert not (tmp_path / "out").exists()
