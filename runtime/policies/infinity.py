"""SkipVAR on Infinity, as published, and the policy factory for Infinity requests.

SkipVAR was fitted on Infinity-2B at 1024 px (13 scales), so here it runs as published: after
scale 9 (32x32) the summed codes after scales 8 and 9 are down-sampled to the 8x8 grid of scale 4
(trilinear, Infinity's own down-sampling), decoded (128 px), and the Sobel high-frequency
difference and FFT high-frequency ratio pick one of skip-last-k / conditional-only-last-k / base
through the shipped logistic regressions (``data/skipvar_infinity2b.json``). Only the features
differ from VAR's :class:`~varrt.runtime.policies.skipvar.SkipVarPolicy` (the BSQ decoder, the
(h, w) grid, the patchified 8B layout); options, plans and decisions are the same.

Every other policy is family-neutral: it reads the request's schedule through ``grids`` and runs
on Infinity unchanged (FastVAR with the published Infinity-2B settings as its default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from varrt.export.graphs import GraphSpec
from varrt.export.infinity_config import BSQVAEConfig, InfinitySchedule
from varrt.export.infinity_graphs import infinity_decoder_spec
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, make_policy
from varrt.runtime.policies.skipvar import SkipVarPolicy


class InfinitySkipVar(SkipVarPolicy):
    """SkipVAR as published: one decision per sample after the decision scale (default 9 of 13)."""

    def _vae_grid(self, patchify: bool) -> tuple[int, int]:
        h, w = self.grid
        return (2 * h, 2 * w) if patchify else (h, w)

    def extra_graphs(self, vcfg: BSQVAEConfig, batch: int, patchify: bool = False) -> list[GraphSpec]:
        return [infinity_decoder_spec(vcfg, 2 * batch, self._vae_grid(patchify))]

    def small_decodes(self, state: ScaleState) -> Tensor:
        """The summed codes one scale earlier and now, trilinearly down-sampled (Infinity's own
        down-sampling) and decoded by the BSQ decoder: (2B, 3, h, w) in [0, 1]."""
        engine = state.engine
        size = self._vae_grid(engine.config.patchify)
        both = torch.cat((state.f_hat_prev, state.f_hat)).unsqueeze(2)
        small = F.interpolate(both, size=(1, *size), mode="trilinear").squeeze(2)
        return engine.run(infinity_decoder_spec(engine.vae_config, small.shape[0], size), {"codes": small})["image"]


def make_infinity_policy(spec: str, schedule: InfinitySchedule, depth: int) -> Policy:
    """Any policy spec (``full``, ``NAME[:k=v,...]``, ``A+B``, a plan file) for an Infinity
    model of ``depth`` blocks generating on ``schedule``."""
    return make_policy(spec, PolicyTarget(schedule, depth, family="infinity"))
