"""Which input alignment a device stream gets: the stage built from a bundle's references
(`for_bundle`), and where it is on by default (`AutoInputs`: ahead of this project's policies,
with offsets under `BATCH_NORM_OFFSET_FLOOR` left to a batch-norm model's own statistics).
`input_alignment` is the stage itself; this module only wires it to bundles and policies."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_ttt.adapt.input_alignment import InputAlignment, InputOptions
from edge_ttt.adapt.mounting import Mounting, MountOptions
from edge_ttt.adapt.policies import POLICY_TYPES
from edge_ttt.adapt.transforms import triads

if TYPE_CHECKING:
    from edge_ttt.manifest import Manifest

BATCH_NORM_OFFSET_FLOOR = 3.0  # source stds; `AutoInputs` on batch-norm bundles


def for_bundle(manifest: Manifest, bundle_path: str | Path, options: InputOptions) -> InputAlignment:
    """The input alignment stage for a bundle's references; refused for a bundle exported before it."""
    refs = manifest.reference.class_channels
    if refs is None:
        raise ValueError(
            f"bundle {bundle_path} has no reference.class_channels (it was exported before "
            "input alignment existed); re-export it with `edge-ttt export`, or turn input alignment off"
        )
    entropy = manifest.reference.entropy
    reliable = (
        np.inf
        if options.reliable_quantile >= 1.0
        else float(np.interp(options.reliable_quantile, entropy.q, entropy.value))
    )
    std = np.sqrt([c.var for c in manifest.reference.channels])
    spread = (np.array(refs.offset_spread), np.array(refs.log_gain_spread))
    mount = manifest.reference.mounting
    mounting = None
    if options.mounting and mount is not None:  # without the postures: no mounting search
        groups = triads(manifest.model.channels)
        mounting = Mounting(
            MountOptions(),
            np.array(mount.postures),
            mount.classes,
            mount.posture_level,
            tuple(mount.triad),
            groups,
        )
    noise = None if refs.noise_share is None else np.array(refs.noise_share)
    return InputAlignment(
        options, (np.array(refs.mean), np.array(refs.autocov)), std, spread, reliable, mounting, noise
    )


@dataclass(frozen=True)
class AutoInputs:
    """Input alignment as it is on by default: ahead of this project's policies (`Policy.aligned`:
    the default, `steady`, and `ttt`), on a bundle with the references for it. On a bundle
    without batch norms the policy has no statistics to adapt and alignment is what moves the
    model. On a batch-norm bundle `steady`'s own statistics absorb a
    moderate offset, and alignment of offsets too lost up to 34 points against them on
    class-sorted streams, so offsets under `BATCH_NORM_OFFSET_FLOOR` source stds are left to them:
    there alignment undoes mounting and gains far out of the source range (docs/adaptation.md)."""

    options: InputOptions = field(default_factory=InputOptions)

    def resolve(self, policy: str, manifest: Manifest) -> InputOptions | None:
        """The options for `policy` on the bundle of `manifest`; None: no alignment."""
        if not POLICY_TYPES[policy].aligned or manifest.reference.class_channels is None:
            return None
        if manifest.batch_norms:  # offsets within the floor are left to the policy's statistics
            return replace(self.options, offset_floor=max(self.options.offset_floor, BATCH_NORM_OFFSET_FLOOR))
        return self.options


AUTO_INPUTS = AutoInputs()
