"""The network: a small MONAI 3-D UNet that maps a volume to a lesion logit map, wrapped so its
outputs are what the runtime reads: the study probability and per-slice scores (key slice)."""
from __future__ import annotations

import torch
from torch import nn


def build_model(cfg: dict) -> "Triager":
    """The model a config describes (its ``train`` section; its input shape decides 2-D or 3-D:
    a depth of 1 is a radiograph)."""
    tc = cfg["train"]
    mirror = bool(tc.get("mirror", False))
    from pipelines.train import input_spec

    planar = input_spec(cfg).shape[0] == 1
    net = build_net(tc.get("channels", (8, 16, 32)), in_channels=2 if mirror else 1, spatial_dims=2 if planar else 3)
    return Triager(net, mirror, planar, evidence=int(tc.get("evidence_voxels", 1)))


def build_net(channels=(8, 16, 32), in_channels: int = 1, spatial_dims: int = 3) -> nn.Module:
    from monai.networks.nets import UNet

    # Batch norm, not MONAI's default instance norm: in eval mode it is a fixed affine map, so
    # ONNX Runtime matches torch within the export's 1e-4 (instance norm's reductions over
    # ~300k voxels drifted past it).
    net = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, channels=tuple(channels),
               strides=tuple(2 for _ in channels[1:]), num_res_units=1, norm="batch")
    # Lesion voxels are rare: start the output at a low prior (sigmoid(-4) ≈ 0.02) rather than 0.5,
    # otherwise the first hundreds of steps only learn the background.
    convs = (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)
    last = [m for m in net.modules() if isinstance(m, convs)][-1]
    with torch.no_grad():
        last.bias.fill_(-4.0)
    return net


class Triager(nn.Module):
    """x [N,1,D,H,W] → (probability [N,1], slice scores [N,1,D]).

    A slice's score is the sigmoid of its highest voxel logit (it picks the key slice). The
    study's score needs evidence: the sigmoid of the mean of its ``evidence`` highest voxel
    logits, anywhere in the volume, so one faintly raised voxel (a bright rim, a noise spike)
    is not a finding; ``evidence`` is set from the smallest lesion a reader is asked to find,
    in the input's voxels. With ``evidence`` 1 it is the highest voxel (the models before).
    The heat map is the sigmoid of the voxel logits (training works on the logits).

    With ``mirror`` the network also sees the volume flipped left to right as a second channel,
    so each voxel is compared with the other side of the head: what is missing on one side
    (an occluded artery) or present on one side only (a bleed) stands out locally.

    ``planar``: the input is one image (a radiograph, depth 1) and ``net`` a 2-D network; the
    interface stays [N,1,1,H,W] so the runtime reads every model the same way."""

    def __init__(self, net: nn.Module, mirror: bool = False, planar: bool = False, evidence: int = 1):
        super().__init__()
        self.net = net
        self.mirror = mirror
        self.planar = planar
        self.evidence = max(1, int(evidence))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.planar:
            x = x[:, :, 0]
        if self.mirror:
            x = torch.cat([x, torch.flip(x, dims=[-1])], dim=1)
        out = self.net(x)
        return out.unsqueeze(2) if self.planar else out

    def heat(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def forward(self, x: torch.Tensor):
        voxels = self.logits(x)
        slices = torch.sigmoid(voxels.amax(dim=(3, 4)))
        if self.evidence == 1:
            return slices.amax(dim=2), slices
        return torch.sigmoid(study_logit(voxels, self.evidence)), slices


def study_logit(voxels: torch.Tensor, evidence: int) -> torch.Tensor:
    """[N,1,D,H,W] voxel logits → [N,1]: the mean of the ``evidence`` highest."""
    flat = voxels.flatten(2)
    return flat.topk(min(evidence, flat.shape[-1]), dim=-1).values.mean(dim=-1)
