"""The server tests' shared fixtures: the pair artifact loaded once per module, and a live server on it."""
from __future__ import annotations

import pytest

from accelc.runtime import predictor as runtime
from tests.fixtures.helpers import shared_artifact
from tests.fixtures.servers import LIMITS, live


@pytest.fixture(scope="module")
def predictor():
    return runtime.load(shared_artifact())


@pytest.fixture(scope="module")
def url(predictor):
    with live(predictor, **LIMITS) as base:
        yield base
