"""What every pass config shares: strict frozen models, and the two questions a target asks of a
pass before any work starts (which dtypes it needs, which of its explicit values it cannot honour)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from accelc.config.targets import Target

ENTRYPOINT = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


@dataclass(frozen=True)
class Mismatch:
    """A field of a pass config the target cannot honour; the caller adds the location."""

    field: str
    message: str
    hint: str | None = None


class PassConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def required_dtypes(self) -> tuple[str, ...]:
        """Dtypes the target must support for this pass to run."""
        return ()

    def target_problems(self, target: Target) -> list[Mismatch]:
        """Explicit settings `target` cannot honour (none for most passes)."""
        return []


def located(message: str, field: str) -> PydanticCustomError:
    """A model-level error the recipe loader points at `field` of this pass (recipe.located_error)."""
    return PydanticCustomError("located", message, {"at": (field,)})  # `message` must not contain "{at}"
