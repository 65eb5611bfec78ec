"""What the memory-bank peers (NOTE, RoTTA) share: windows offered to a memory in order, and a
step on the memory every `update_every` windows, also in the middle of a batch."""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.layerwise import joined
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.policies.base import Policy


class MemoryPolicy(Policy):
    """Base of a policy whose `Options` have `update_every`; subclasses keep `arrived` (windows
    offered so far, in their state), and give `_remember` (offer a part's windows, predicted as
    `out`, to the memory) and `_step` (the step on the memory)."""

    arrived: int

    def update(self, x: np.ndarray) -> Outputs:
        """Windows in order; a step between two windows when the count comes round. A batch of n
        windows is then the same steps as n batches of one."""
        every, outs, i = self.options.update_every, [], 0
        while i < len(x):
            part = x[i : i + every - self.arrived % every]  # up to the next step
            out = self.predict(part)
            self._remember(part, out)
            self.arrived += len(part)
            if self.arrived % every == 0:
                self._step()
            outs.append(out)
            i += len(part)
        self.counters.adapt_steps += 1  # the memory saw the batch
        return joined(outs)

    def _remember(self, part: np.ndarray, out: Outputs) -> None:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError
