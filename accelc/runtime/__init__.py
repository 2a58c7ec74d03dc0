"""Run a compiled artifact: `load(folder) -> Predictor`, and the HTTP server (`accelc serve`).

Imports neither torch nor the compiler side, so a production server needs neither."""
from accelc.runtime.predictor import Predictor, aligned_empty, import_tvm, load

__all__ = ["Predictor", "aligned_empty", "import_tvm", "load"]
