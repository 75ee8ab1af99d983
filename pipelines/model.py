"""The network: a small MONAI 3-D UNet that maps a volume to a lesion heat map, wrapped so its
outputs are what the runtime reads: the study probability and per-slice scores (key slice)."""
from __future__ import annotations

import torch
from torch import nn


def build_net(channels=(8, 16, 32)) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels),
                strides=tuple(2 for _ in channels[1:]), num_res_units=1)


class Triager(nn.Module):
    """x [N,1,D,H,W] → (probability [N,1], slice scores [N,1,D]); the heat map is sigmoid(net(x))."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def heat(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))

    def forward(self, x: torch.Tensor):
        slices = self.heat(x).amax(dim=(3, 4))
        return slices.amax(dim=2), slices
