"""Graph rewrites on torch.fx. Importing this package registers every pass kind."""
from accelc.passes.base import PASS_CONFIGS, PASSES, PassContext, PassResult, run_passes  # noqa: F401
from accelc.passes import fold, merge_linear, prune, quantize, simplify  # noqa: F401  (registration side effect)
