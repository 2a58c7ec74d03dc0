"""One of TVM's own rules, taken as not applying where its analysis fails: dlight.cpu.GEMV asserts
(`assert s_loops`) on EfficientNet's squeeze-excitation kernels instead of returning None, and a
kernel one rule cannot schedule must fall to the next rule, not end the build."""
from __future__ import annotations

from tvm.s_tir.dlight.cpu.base import CPUScheduleRule


class Tolerant(CPUScheduleRule):
    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except (AssertionError, IndexError, ValueError, RuntimeError):  # TVM's errors are RuntimeErrors
            return None

    def __repr__(self) -> str:
        return f"Tolerant({type(self.rule).__name__})"
