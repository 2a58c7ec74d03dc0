"""The pieces of `accelc serve` beside the app itself (accelc.serve): JSON values <-> checked arrays
(codec), the KServe v2 / Open Inference Protocol (v2), Prometheus metrics (metrics).

Runtime side only, like runtime.py: no torch, no compiler. The server libraries are the `serve`
extra, so their absence is one coded error here rather than an ImportError in each module.
"""
from __future__ import annotations

from ..errors import ToolchainError

try:
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # the server is an extra: the runtime alone does not need it
    raise ToolchainError(f"`accelc serve` needs starlette, uvicorn and prometheus-client ({exc.name} is not "
                         "installed)", code="E510", hint="pip install 'accelc[serve]'") from None
