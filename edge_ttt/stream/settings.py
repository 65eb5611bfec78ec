"""The stream stages' settings: the `[queue]` (inbox) and `[windowing]` (sequencer) tables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_ttt.config_file import Section


class QueueSection(Section):
    max_frames: int = Field(10_000, ge=1)
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    max_frame_bytes: int = Field(65_536, ge=1)


class WindowingSection(Section):
    reorder_frames: int = Field(4, ge=0, description="how late an out-of-order frame may be, in frames")
