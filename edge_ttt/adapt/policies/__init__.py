"""Adaptation policies: what to normalize with, which windows to learn from, how to step.

- `source`: the source model, untouched.
- `norm`: batch norms normalize with momentum averages of the stream's first and second moments.
- `tent`: Tent (Wang et al., 2021): batch statistics, entropy minimization of the norm affines, Adam.
- `sar`: SAR (Niu et al., 2023): entropy filter, sharpness-aware two-pass update, reset on collapse.
- `note`: NOTE (Gong et al., 2022): instance-aware batch norm, a prediction-balanced memory, and
  entropy steps on the memory every 64 windows.
- `unmix-tns`: UnMix-TNS (Tomar et al., 2024): per batch norm K statistics components; each window
  normalizes with their mixture re-weighted by its own statistics (layer by layer); no gradients.
- `rotta`: RoTTA (Yuan et al., 2023): robust batch norm, a category-balanced memory, and a
  teacher-student step on soft targets every 64 windows; needs a bundle whose entropy graph takes
  soft targets (exported by this version or later).
- `steady` (default): class-balanced momentum statistics + filtered, class-balanced entropy steps
  on the norm affines, averaged (EMA) and anchored to source, with collapse rollback.
- `ttt`: test-time training on a self-supervised auxiliary task; needs a bundle with an auxiliary
  head, on which the entropy policies refuse to run.

Every gradient policy also runs episodically (`Policy.episode`): adapt on a batch, predict, forget.
The registry below is the one list of policies: `create` builds one by name and refuses a bundle
whose training graph computes another loss, naming the policies that fit it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies.base import Policy, PolicyMismatchError, bundle_loss, fits, misfit
from edge_ttt.adapt.policies.norm import Norm
from edge_ttt.adapt.policies.note import Note
from edge_ttt.adapt.policies.rotta import Rotta
from edge_ttt.adapt.policies.sar import Sar
from edge_ttt.adapt.policies.source import Source
from edge_ttt.adapt.policies.steady import Steady
from edge_ttt.adapt.policies.tent import Tent
from edge_ttt.adapt.policies.ttt import TestTimeTraining
from edge_ttt.adapt.policies.unmix_tns import UnmixTns

POLICY_TYPES: dict[str, type[Policy]] = {
    p.name: p for p in (Source, Norm, Tent, Sar, Note, UnmixTns, Rotta, Steady, TestTimeTraining)
}
DEFAULT_POLICY = Steady.name

__all__ = [
    "DEFAULT_POLICY",
    "POLICY_TYPES",
    "Norm",
    "Note",
    "Policy",
    "PolicyMismatchError",
    "Rotta",
    "Sar",
    "Source",
    "Steady",
    "Tent",
    "TestTimeTraining",
    "UnmixTns",
    "bundle_loss",
    "create",
    "fits",
    "misfit",
]


def create(name: str, model: OrtModel, counters: Counters, options: Mapping[str, Any]) -> Policy:
    """The policy `name` on the model, with its options by keyword: PolicyMismatchError when the
    bundle does not fit it, TypeError for an option it does not take, ValueError for a bad value."""
    policy = POLICY_TYPES[name]
    manifest = model.manifest
    reason = misfit(policy, manifest)
    if reason is not None:
        usable = ", ".join(p.name for p in POLICY_TYPES.values() if fits(p, manifest))
        raise PolicyMismatchError(
            f"policy {name!r} cannot run on bundle {model.bundle_path}: {reason}; "
            f"the policies that run on it: {usable}"
        )
    return policy(model, counters, policy.Options(**options))
