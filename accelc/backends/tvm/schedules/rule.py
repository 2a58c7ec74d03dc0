"""What every default schedule rule starts from: the kernel's blocks in a fresh schedule, and the
dispatch by tag that `RULES` (schedules/__init__.py) is built with."""
from __future__ import annotations

from contextvars import ContextVar

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import tags


def root_blocks(rule: CPUScheduleRule, func, target: Target):
    """(schedule, the root block's children) of a kernel `rule` may schedule, else None."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    sch = s_tir.Schedule(func)
    try:
        return sch, sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # hand-written kernels may have no root block: not ours to schedule
        return None


def block_tags(sch, blocks) -> list[str]:
    """The tag of each block (kernels/tags.py), "" for untagged ones."""
    return [tags.of(sch.get(block)) for block in blocks]


_LAST: list = []  # [(kernel, its tags)]: ApplyDefaultSchedule asks once per row of RULES about each kernel
# While a build's ApplyDefaultSchedule runs: [(kernel, the rule that scheduled it)] (kernel_map.py)
RECORDING: ContextVar[list | None] = ContextVar("accelc_schedule_recording", default=None)


def kernel_tags(func) -> tuple[str, ...]:
    """The tags of a kernel's top-level blocks (none for a kernel without a root block)."""
    if _LAST and _LAST[0][0].same_as(func):
        return _LAST[0][1]
    try:
        sch = s_tir.Schedule(func)
        found = tuple(block_tags(sch, sch.get_child_blocks(sch.get_sblock("root"))))
    except Exception:  # no root block: only "*" rules see it, and they decline it as well
        found = ()
    _LAST[:] = [(func, found)]
    return found


class Tagged(CPUScheduleRule):
    """A rule tried only on kernels whose tags match `pattern` (kernels/tags.matches)."""

    def __init__(self, pattern: str, rule: CPUScheduleRule):
        self.pattern, self.rule = pattern, rule

    def apply(self, func, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not tags.matches(self.pattern, kernel_tags(func)):
            return None
        space = self.rule.apply(func, target, tunable)
        recording = RECORDING.get()
        if space is not None and recording is not None:
            recording.append((func, self.rule))
        return space

    def __repr__(self) -> str:
        return f"Tagged({self.pattern!r}, {type(self.rule).__name__})"


def data_parallel(sch, blocks) -> bool:
    """Whether every block is injective (no reduction axis): elementwise, copies, concatenations."""
    return all(iv.iter_type == tirx.IterVar.DataPar for b in blocks for iv in sch.get(b).iter_vars)
