"""Test tiers: tests/unit/<package> mirrors accelc/<package>; tests/integration builds recipes end to end
(all marked `build`); tests/docs checks the README and the docs site. Shared helpers live in tests/fixtures;
no test module imports another."""
from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.build)
