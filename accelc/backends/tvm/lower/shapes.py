"""Shapes of Relax values in the converters (every converter here works on static shapes)."""
from __future__ import annotations


def static_shape(expr) -> list[int]:
    """The shape of a Relax value whose dimensions are all known integers."""
    return [int(d) for d in expr.ty.shape]
