"""The stream stages' settings: the `[queue]` (inbox) and `[windowing]` (sequencer) tables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_ttt.config_file import Section


class QueueSection(Section):
    max_frames: int = Field(10_000, ge=1)
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    max_frame_bytes: int = Field(65_536, ge=1, description="larger payloads are refused before queueing")
    max_bytes: int = Field(16 * 2**20, ge=1, description="bound of the queued payloads' bytes")

    @model_validator(mode="after")
    def _a_frame_fits(self) -> QueueSection:
        if self.max_bytes < self.max_frame_bytes:
            raise ValueError(
                f"max_bytes ({self.max_bytes}) is below max_frame_bytes ({self.max_frame_bytes}): frames of "
                "the allowed size could never be queued; raise max_bytes or lower max_frame_bytes"
            )
        return self


class WindowingSection(Section):
    reorder_frames: int = Field(4, ge=0, description="how late an out-of-order frame may be, in frames")
