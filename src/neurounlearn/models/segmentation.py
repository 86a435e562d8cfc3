"""Segmentation with unlearning: a 3D U-Net whose confound heads attach at named points.

The paper's second architecture (Dinsdale et al. 2021, NeuroImage 228:117689, section 2.5): a
U-Net segments tissue while adversaries at the ``bottleneck`` (deepest encoder features) and/or
at ``final`` (the last decoder features, before the 1x1x1 classifier; the paper's best setting)
try to tell the scanner from the feature maps. Each adversary first turns its feature map into a
vector (a 3x3x3 convolution, ReLU, global average pooling), then classifies the confound with
the same :class:`~neurounlearn.models.unlearning.ConfoundHead` the other models use. With both
points (the paper's "multi" variant) each confound's heads at both points form one ensemble:
the losses average over them, so the encoder must fool both. Heads can also sit at an encoder
level (``encoder0`` ... ``encoder3``), whose map reaches the decoder through its skip
connection, past the bottleneck.

The model keeps :class:`~neurounlearn.models.unlearning.UnlearningModel`'s interface
(``encode``, ``predict_task``, ``confound_logits``, ``task_parameters``, ...), so the strategies
run it unchanged; its ``encode`` returns :class:`SegFeatures` (the logits and the attach
points' feature maps) instead of one vector.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from monai.networks.nets import BasicUNet
from torch import Tensor, nn

from neurounlearn.choices import ATTACH_POINTS, FULL_RESOLUTION
from neurounlearn.models.grl import GradientReversal
from neurounlearn.models.unlearning import ConfoundHead, head_sizes

#: BasicUNet features (five encoder levels, then the last decoder's width) sized for a CPU: a
#: batch of 8 at 48³ trains in about 0.9 s on two cores. MONAI's own default is
#: ``(32, 32, 64, 128, 256, 32)``, for a GPU.
UNET_FEATURES = (8, 16, 32, 32, 64, 8)

#: Width of the convolution that starts each attach point's head.
HEAD_CHANNELS = 16


@dataclass
class SegFeatures:
    """What the U-Net's ``encode`` returns: the class logits and each attach point's map."""

    logits: Tensor
    points: dict[str, Tensor]

    def detach(self) -> SegFeatures:
        return SegFeatures(self.logits.detach(), {k: v.detach() for k, v in self.points.items()})


def pooled(feature_map: Tensor) -> Tensor:
    """``(B, C, *spatial)`` -> ``(B, 2C)``: each channel's mean and standard deviation over the
    volume (what the leakage probes see: contrast differences live in the spread as much as in
    the mean)."""
    flat = feature_map.flatten(2).float()
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


class UNet3D(nn.Module):
    """MONAI's :class:`~monai.networks.nets.BasicUNet` with its attach points exposed.

    Args:
        spatial_dims: 3 for volumes, 2 for slices.
        in_channels: input channels.
        out_channels: classes, background included.
        features: six widths: five encoder levels (the fifth is the bottleneck) and the last
            decoder block (``final``).
        dropout: dropout inside the convolution blocks.

    Examples:
        >>> net = UNet3D(out_channels=4, features=(4, 4, 8, 8, 8, 4))
        >>> out = net(torch.zeros(2, 1, 16, 16, 16))
        >>> out.logits.shape, out.points["bottleneck"].shape
        (torch.Size([2, 4, 16, 16, 16]), torch.Size([2, 8, 1, 1, 1]))
        >>> out.points["final"].shape
        torch.Size([2, 4, 16, 16, 16])
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int,
        features: Sequence[int] = UNET_FEATURES,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) != 6 or any(int(f) < 1 for f in features):
            raise ValueError(
                f"a U-Net needs six positive widths (five encoder levels, then the last "
                f"decoder block), got {tuple(features)}"
            )
        if out_channels < 2:
            raise ValueError(f"a segmentation needs at least 2 classes, got {out_channels}")
        self.spatial_dims = spatial_dims
        self.features = tuple(int(f) for f in features)
        self.out_channels = out_channels
        # batch norm, as in the paper's U-Net; instance norm would already remove part of each
        # scan's intensity profile, and with it part of what unlearning is measured on
        self.net = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=self.features,
            norm=("batch", {"affine": True}),
            dropout=dropout,
        )
        #: channels of each attach point's feature map (the six widths are in ATTACH_POINTS order)
        self.point_channels = dict(zip(ATTACH_POINTS, self.features, strict=True))

    def forward(self, x: Tensor) -> SegFeatures:
        n = self.net
        x0 = n.conv_0(x)
        x1 = n.down_1(x0)
        x2 = n.down_2(x1)
        x3 = n.down_3(x2)
        x4 = n.down_4(x3)
        u4 = n.upcat_4(x4, x3)
        u3 = n.upcat_3(u4, x2)
        u2 = n.upcat_2(u3, x1)
        u1 = n.upcat_1(u2, x0)
        maps = (x0, x1, x2, x3, x4, u1)
        return SegFeatures(n.final_conv(u1), dict(zip(ATTACH_POINTS, maps, strict=True)))


class PointHead(nn.Module):
    """One attach point's adversary: convolution + ReLU + global average pooling, then a
    :class:`ConfoundHead` (batch-standardised, ``n_heads`` independent classifiers)."""

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        n_classes: int,
        *,
        hidden: int,
        n_heads: int,
        stride: int,
    ) -> None:
        super().__init__()
        self.conv = Convolution(
            spatial_dims,
            channels,
            HEAD_CHANNELS,
            strides=stride,
            kernel_size=3,
            act="relu",
            norm=None,  # the ConfoundHead standardises the pooled vector over the batch
        )
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.classify = ConfoundHead(HEAD_CHANNELS, n_classes, hidden=hidden, n_heads=n_heads)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.classify(self.pool(self.conv(feature_map)).flatten(1))


class SegmentationModel(nn.Module):
    """U-Net ``E`` (its logits are the task output) and confound heads at the attach points.

    Args:
        encoder: a :class:`UNet3D`.
        confounds: confound name -> number of classes (in the batch's confound column order).
        continuous: confounds whose head regresses the value (the correlation method).
        attach: the attach points, a non-empty subset of :data:`ATTACH_POINTS`.
        head_hidden: hidden width of each classifier (0: linear).
        n_heads: classifiers per confound and attach point.

    Examples:
        >>> unet = UNet3D(out_channels=3, features=(4, 4, 8, 8, 8, 4))
        >>> model = SegmentationModel(unet, {"site": 2}, attach=["bottleneck", "final"],
        ...                           n_heads=2)
        >>> f = model.encode(torch.zeros(3, 1, 16, 16, 16))
        >>> model.predict_task(f).shape, model.confound_logits(f)["site"].shape
        (torch.Size([3, 3, 16, 16, 16]), torch.Size([4, 3, 2]))
    """

    def __init__(
        self,
        encoder: UNet3D,
        confounds: Mapping[str, int],
        *,
        continuous: Sequence[str] = (),
        attach: Sequence[str] = ("bottleneck",),
        head_hidden: int = 32,
        n_heads: int = 1,
    ) -> None:
        super().__init__()
        unknown = [p for p in attach if p not in ATTACH_POINTS]
        if unknown or not attach:
            raise ValueError(
                f"unknown attach point(s) {unknown or list(attach)}; choose from "
                f"{', '.join(ATTACH_POINTS)}"
            )
        self.encoder = encoder
        self.task_head = nn.Identity()
        self.attach = list(dict.fromkeys(attach))
        self.continuous = list(continuous)
        sizes = head_sizes(confounds, continuous)
        self.confound_names = list(sizes)
        self.confound_heads = nn.ModuleDict(
            {
                name: nn.ModuleDict(
                    {
                        point: PointHead(
                            encoder.spatial_dims,
                            encoder.point_channels[point],
                            k,
                            hidden=head_hidden,
                            n_heads=n_heads,
                            # a full-resolution map is halved before pooling
                            stride=2 if point in FULL_RESOLUTION else 1,
                        )
                        for point in self.attach
                    }
                )
                for name, k in sizes.items()
            }
        )
        self.reversal = nn.ModuleDict({name: GradientReversal(0.0) for name in sizes})

    def encode(self, x: Tensor) -> SegFeatures:
        return self.encoder(x)

    def predict_task(self, features: SegFeatures) -> Tensor:
        return features.logits

    def confound_logits(
        self,
        features: SegFeatures,
        *,
        reverse: bool = False,
        conditions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Each confound's heads at every attach point, stacked as one ensemble.

        Returns:
            name -> ``(H, B, K)`` logits over the ``H`` heads of all attach points (``(B, K)``
            when there is one head in all), or ``(H, B)`` / ``(B,)`` values for a continuous
            confound.
        """
        out = {}
        for name, heads in self.confound_heads.items():
            outputs = []
            for point, head in cast(nn.ModuleDict, heads).items():
                fmap = features.points[point]
                fmap = self.reversal[name](fmap) if reverse else fmap
                value = head(fmap)
                outputs.append(value if value.ndim == 3 else value.unsqueeze(0))
            stacked = torch.cat(outputs)
            if len(stacked) == 1:
                stacked = stacked[0]
            out[name] = stacked.squeeze(-1) if name in self.continuous else stacked
        return out

    def pooled_features(self, features: SegFeatures) -> dict[str, Tensor]:
        """Every attach point's map (whether a head sits there or not) as pooled vectors."""
        return {point: pooled(fmap) for point, fmap in features.points.items()}

    def task_parameters(self) -> Iterator[nn.Parameter]:
        """The U-Net (its classifier is the task head)."""
        yield from self.encoder.parameters()

    def adversary_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.confound_heads.parameters()
