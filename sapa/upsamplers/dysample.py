"""DySample (Liu et al. 2023): upsampling by learned point sampling."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Upsampler, _positive_int

__all__ = ["DySample"]


class DySample(Upsampler):
    """DySample (Liu et al. 2023), "lp" style: upsampling by point sampling.

    x (B, C, H, W) -> (B, C, sH, sW); y (optional) is only checked for its size.

    offsets o = 0.25 * Conv1x1(x; C -> 2 g s^2) + init_pos (static scope), or
    o = 0.5 * sigmoid(Conv1x1_scope(x)) * Conv1x1(x) + init_pos (``dyscope=True``, DySample+),
    where init_pos puts the s^2 sub-pixel points of a low-res pixel at (k + 0.5)/s - 0.5
    (k = 0..s-1) from its centre; pixel shuffle to one (dx, dy) per output pixel and group;
    ``grid_sample`` (bilinear, border padding, align_corners=False) of each of the g channel
    groups at its own points. With zero offsets it is exactly bilinear upsampling with border
    padding.
    As in the official module (``tiny-smart/dysample``), ``init_pos`` (1, 2 g s^2, 1, 1) is a
    registered (persistent) buffer, so it is in the state_dict and an official checkpoint loads
    with ``strict=True``; a state_dict without it (written by this project before it became
    persistent) still loads, the constant is then kept.
    Init: offset normal(std=0.001) weights, zero bias; scope weights and bias 0.
    Params: 2 g s^2 (C + 1) (32C + 32 at s=2, g=4), twice that with ``dyscope``.
    """

    name = "dysample"
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2, groups=4, offset_scale=0.25, dyscope=False):
        super().__init__(in_channels, guide_channels, scale_factor)
        self.groups = _positive_int("groups", groups)
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels={self.in_channels} must be divisible by groups={groups}")
        self.offset_scale = float(offset_scale)
        s = self.scale_factor
        self.offset = nn.Conv2d(self.in_channels, 2 * self.groups * s * s, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        self.dyscope = bool(dyscope)
        if self.dyscope:
            self.scope = nn.Conv2d(self.in_channels, 2 * self.groups * s * s, 1)
            nn.init.zeros_(self.scope.weight)
            nn.init.zeros_(self.scope.bias)
        h = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5  # sub-pixel positions
        init = torch.stack(torch.meshgrid(h, h, indexing="ij"))  # (2, s, s): [0]=dy(i), [1]=dx(j)
        init = init.flip(0)  # [0] = dx, [1] = dy
        init = init.reshape(2, 1, s * s).expand(2, self.groups, s * s).reshape(1, -1, 1, 1)
        self.register_buffer("init_pos", init.contiguous())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # state_dicts written before init_pos became persistent lack this constant: keep ours
        state_dict.setdefault(prefix + "init_pos", self.init_pos.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self):
        return super().extra_repr() + (
            f", groups={self.groups}, offset_scale={self.offset_scale}, dyscope={self.dyscope}"
        )

    def offsets(self, x: torch.Tensor, learned_only: bool = False) -> torch.Tensor:
        """Sampling offsets (B, 2, g, sH, sW) in low-res pixels ([:, 0] = dx, [:, 1] = dy).

        Relative to the centre of the low-res pixel; ``learned_only`` drops the fixed init_pos.
        """
        B, C, H, W = x.shape
        s, g = self.scale_factor, self.groups
        # (B, 2 g s^2, H, W), channel order (xy, group, sub-pixel)
        if self.dyscope:  # DySample+: 0.5 * sigmoid(scope) replaces the static 0.25
            off = self.offset(x) * torch.sigmoid(self.scope(x)) * 0.5
        else:
            off = self.offset(x) * self.offset_scale
        if not learned_only:
            off = off + self.init_pos.to(x.dtype)
        return F.pixel_shuffle(off, s).view(B, 2, g, s * H, s * W)

    def forward(self, x, y=None):
        self._output_size(x, y)
        B, C, H, W = x.shape
        s, g = self.scale_factor, self.groups
        off = self.offsets(x)
        cx = torch.arange(W, device=x.device, dtype=x.dtype) + 0.5
        cy = torch.arange(H, device=x.device, dtype=x.dtype) + 0.5
        cx = cx.repeat_interleave(s).view(1, 1, 1, s * W)
        cy = cy.repeat_interleave(s).view(1, 1, s * H, 1)
        gx = 2 * (cx + off[:, 0]) / W - 1  # (B, g, sH, sW)
        gy = 2 * (cy + off[:, 1]) / H - 1
        grid = torch.stack([gx, gy], dim=-1).flatten(0, 1)  # (B g, sH, sW, 2)
        out = F.grid_sample(
            x.reshape(B * g, C // g, H, W), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.view(B, C, s * H, s * W)

    def uncounted_macs(self, x, y):
        H, W = self._output_size(x, y)
        return {"sampling": 4 * x.shape[0] * x.shape[1] * H * W}
