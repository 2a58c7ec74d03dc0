"""Manifests with a named dimension (model.dims): the buckets, their padding and the output axes that
follow them round-trip through JSON; manifests written before dims existed load unchanged."""
from __future__ import annotations

import pytest

from accelc.artifact.manifest import Dim, Manifest, bucket_key
from accelc.errors import ArtifactError
from tests.fixtures.manifests import TODAY, today


def with_seq() -> dict:
    data = today()
    data["inputs"] = [{"name": "ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 100]},
                      {"name": "mask", "shape": ["batch", "seq"], "dtype": "int64"}]
    data["outputs"] = [{"name": "hidden", "shape": ["batch", "seq", 8], "dtype": "float32"},
                       {"name": "pooled", "shape": ["batch", 8], "dtype": "float32"}]
    data["functions"] = {"1,16": "main_b1_s16", "1,32": "main_b1_s32", "4,16": "main_b4_s16", "4,32": "main_b4_s32"}
    data["dims"] = [{"name": "seq", "sizes": [16, 32], "pad": {"ids": 0}, "mask": "mask"}]
    return data


def test_buckets_round_trip():
    m = Manifest.from_json(with_seq())
    assert m.dims == (Dim("seq", (16, 32), {"ids": 0}, "mask"),)
    assert m.by_bucket == {(16,): {1: "main_b1_s16", 4: "main_b4_s16"}, (32,): {1: "main_b1_s32", 4: "main_b4_s32"}}
    hidden, pooled = m.outputs
    assert (hidden.axis("seq"), hidden.dims, hidden.batched, pooled.axis("seq")) == (1, (None, None, 8), True, None)
    assert m.to_json() == with_seq() and Manifest.from_json(m.to_json()) == m
    assert bucket_key(4, (32,)) == "4,32" and bucket_key(None) == "None"


def test_a_manifest_from_before_dims_loads_unchanged():
    m = Manifest.from_json(TODAY)
    assert m.dims is None and "dims" not in m.to_json() and m.by_bucket == {(): {1: "main_b1", 64: "main_b64"}}


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["functions"].update({"16": "main_b16"}), "functions['16']"),  # a bucket without its size
    (lambda d: d["dims"][0].update(sizes=[32, 16]), "dims[0].sizes"),
    (lambda d: d["inputs"][0].update(shape=["batch", "s q"]), "inputs[0].shape[1]"),
    (lambda d: d["inputs"][0].update(shape=["seq", "seq"]), "inputs[0].shape"),
])
def test_malformed_buckets_are_one_e701(edit, field):
    data = with_seq()
    edit(data)
    with pytest.raises(ArtifactError) as info:
        Manifest.from_json(data)
    assert (info.value.code, info.value.problems[0].field) == ("E701", field)
