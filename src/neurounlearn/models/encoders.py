"""3D CNN encoders for brain MRI: each maps ``(B, C, *spatial)`` volumes to ``(B, D)`` features.

Three encoders, each exposing ``out_features`` (``D``) as :class:`UnlearningModel` requires:

- :class:`CompactCNN3D` -- a small strided CNN, the CPU default (a batch of 16 at 48³ trains in
  about a tenth of a second on two cores).
- :class:`PaperCNN3D` -- the VGG-like brain-age encoder of Dinsdale et al. 2021, "Deep
  learning-based unlearning of dataset bias for MRI harmonisation and confound removal",
  NeuroImage 228:117689 (reference code: github.com/nkdinsdale/Unlearning_for_MRI_harmonisation).
- :class:`SFCN3D` -- the Simple Fully Convolutional Network of Peng et al. 2021, "Accurate brain
  age prediction with lightweight deep neural networks", Medical Image Analysis 68:101871.

All are built from MONAI blocks and take MONAI's argument names (``spatial_dims``,
``in_channels``, ``channels``, ``strides``); ``spatial_dims=2`` gives the same network on slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Pool
from torch import Tensor, nn
from torch.func import functional_call

from neurounlearn.choices import CNNEncoderName, check_choice

#: Normalisation layers an encoder accepts, by name.
NORMS = ("batch", "instance", "none")

# Published defaults, shared by the constructors and :func:`build_encoder`.
COMPACT_CHANNELS = (8, 16, 32, 64)
COMPACT_STRIDES = (2, 2, 2, 2)
PAPER_CHANNELS = (32, 64, 64, 96, 96, 96)  # Dinsdale et al. 2021
SFCN_CHANNELS = (32, 64, 128, 256, 256, 64)  # Peng et al. 2021
SFCN_DROPOUT = 0.5  # Peng et al. 2021


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def _check_positive(name: str, values: Sequence[int]) -> None:
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")
    if any(not isinstance(v, Integral) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {tuple(values)}")


def _check_same_length(name_a: str, a: Sequence[int], name_b: str, b: Sequence[int]) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"{name_a} and {name_b} must have one entry per stage, "
            f"got len({name_a})={len(a)} and len({name_b})={len(b)}"
        )


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _norm_layer(norm: str) -> tuple[str, dict[str, bool]] | None:
    """MONAI's description of the normalisation ``norm`` names (``None``: no normalisation)."""
    check_choice("norm", norm, NORMS)
    if norm == "none":
        return None
    # instance norm is affine-free by default in MONAI; give it the same learnable scale and
    # shift as batch norm so switching between them changes only what is normalised over
    return (norm, {"affine": True})


def _check_input(x: Tensor, spatial_dims: int, in_channels: int, owner: str) -> None:
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"{owner} expects input of shape (B, {in_channels}, "
            f"{', '.join('*' * spatial_dims)}), got {tuple(x.shape)}"
        )


class CompactCNN3D(nn.Module):
    """A compact strided CNN: the default encoder on a CPU.

    Each stage is a strided 3×3×3 convolution (conv, norm, ReLU) that downsamples, then a second
    3×3×3 convolution at the new resolution; global average pooling, dropout and a linear layer
    then give the embedding, which is layer-normalised as in :class:`MLPEncoder` so every encoder
    hands the heads features on a comparable scale. Downsampling by strided convolutions rather
    than full-resolution convolutions plus pooling keeps the cost low enough to train on a
    laptop, and global pooling makes it work at any input size.

    Args:
        spatial_dims: 3 for volumes, 2 for slices.
        in_channels: input channels (image modalities).
        channels: output channels of each stage.
        strides: stride of each stage's first convolution; one per entry of ``channels``.
        embedding_dim: width of the output features (``out_features``).
        norm: normalisation after each convolution: one of ``"batch"``, ``"instance"``,
            ``"none"``. Instance norm needs more than one voxel left after the last stage.
        dropout: dropout on the pooled features, before the linear layer.

    Examples:
        >>> CompactCNN3D(channels=(4, 8), strides=(2, 2))(torch.zeros(2, 1, 16, 16, 16)).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = COMPACT_CHANNELS,
        strides: Sequence[int] = COMPACT_STRIDES,
        embedding_dim: int = 32,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        _check_positive("in_channels", [in_channels])
        _check_positive("channels", channels)
        _check_positive("strides", strides)
        _check_same_length("channels", channels, "strides", strides)
        _check_positive("embedding_dim", [embedding_dim])
        _check_dropout(dropout)
        norm_layer = _norm_layer(norm)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_features = embedding_dim
        # a bias before a normalisation layer is cancelled by its mean subtraction
        bias = norm_layer is None
        stages: list[nn.Module] = []
        width = in_channels
        for out, stride in zip(channels, strides, strict=True):
            stages += [
                Convolution(
                    spatial_dims,
                    width,
                    out,
                    strides=stride,
                    kernel_size=3,
                    act="relu",
                    norm=norm_layer,
                    bias=bias,
                ),
                Convolution(
                    spatial_dims, out, out, kernel_size=3, act="relu", norm=norm_layer, bias=bias
                ),
            ]
            width = out
        self.features = nn.Sequential(*stages)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(width, embedding_dim),
            nn.LayerNorm(embedding_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        return self.head(self.pool(self.features(x)))


def _default_convs_per_block(n_blocks: int) -> tuple[int, ...]:
    """Dinsdale et al.'s pattern for ``n_blocks`` blocks: two convolutions in the first two
    blocks, three in the rest (``(2, 2, 3, 3, 3, 3)`` for the paper's six)."""
    return tuple(2 if i < 2 else 3 for i in range(n_blocks))


class PaperCNN3D(nn.Module):
    """The VGG-like brain-age encoder of Dinsdale et al. 2021 (NeuroImage 228:117689).

    Blocks of two or three 3×3×3 convolutions, each followed by ReLU then batch norm (the order
    of the reference code), and a 2×2×2 max-pool after every block; the feature map is
    flattened and a fully connected layer with ReLU gives the embedding (96-wide in the paper).

    The reference code hard-codes the flatten size for its input volume. Here it follows
    ``input_shape``: pooling skips an axis once it is down to one voxel (and stops when all
    are), and the flatten size comes from a dry run of the convolutional blocks at
    construction, so 32³, 48³, 64³ and the paper's 128×160×128 all work. Because the linear
    layer is sized for that one shape, :meth:`forward` rejects any other.

    Args:
        spatial_dims: 3 for volumes, 2 for slices.
        in_channels: input channels (image modalities).
        input_shape: spatial shape of the inputs, e.g. ``(128, 160, 128)``.
        channels: output channels of each block.
        convs_per_block: number of convolutions in each block; one per entry of ``channels``.
        embedding_dim: width of the output features (``out_features``).
        norm: normalisation after each convolution: one of ``"batch"``, ``"instance"``,
            ``"none"``.
        dropout: dropout on the flattened features, before the fully connected layer (the
            reference encoder has none; the default keeps it that way).

    Examples:
        >>> PaperCNN3D(input_shape=(8, 8, 8), channels=(4,))(torch.zeros(2, 1, 8, 8, 8)).shape
        torch.Size([2, 96])
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        input_shape: Sequence[int],
        channels: Sequence[int] = PAPER_CHANNELS,
        convs_per_block: Sequence[int] | None = None,
        embedding_dim: int = 96,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        _check_positive("in_channels", [in_channels])
        _check_positive("input_shape", input_shape)
        if len(input_shape) != spatial_dims:
            raise ValueError(
                f"input_shape must have spatial_dims={spatial_dims} sizes, got {tuple(input_shape)}"
            )
        _check_positive("channels", channels)
        if convs_per_block is None:
            convs_per_block = _default_convs_per_block(len(channels))
        _check_positive("convs_per_block", convs_per_block)
        _check_same_length("channels", channels, "convs_per_block", convs_per_block)
        _check_positive("embedding_dim", [embedding_dim])
        _check_dropout(dropout)
        norm_layer = _norm_layer(norm)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.input_shape = tuple(int(s) for s in input_shape)
        self.out_features = embedding_dim
        layers: list[nn.Module] = []
        width = in_channels
        size = list(self.input_shape)
        for out, n_convs in zip(channels, convs_per_block, strict=True):
            for _ in range(n_convs):
                layers.append(
                    Convolution(
                        spatial_dims,
                        width,
                        out,
                        kernel_size=3,
                        act="relu",
                        norm=norm_layer,
                        adn_ordering="AN",
                    )
                )
                width = out
            # pooling a one-voxel axis would empty it: only pool the axes that still have room
            kernel = [2 if s >= 2 else 1 for s in size]
            if any(k == 2 for k in kernel):
                layers.append(Pool[Pool.MAX, spatial_dims](kernel_size=kernel))
                size = [s // k for s, k in zip(size, kernel, strict=True)]
        self.features = nn.Sequential(*layers)
        self.flat_features = self._dry_run_size()
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(self.flat_features, embedding_dim),
            nn.ReLU(),
        )

    def _dry_run_size(self) -> int:
        """Flattened width of ``features`` at ``input_shape``, measured rather than derived.

        The run happens on the meta device (shapes only, no arithmetic), so even the paper's
        128×160×128 costs nothing, and in eval mode so that batch norm sees no batch statistics.
        """
        state = {
            name: torch.empty_like(t, device="meta")
            for name, t in [*self.features.named_parameters(), *self.features.named_buffers()]
        }
        zeros = torch.zeros(1, self.in_channels, *self.input_shape, device="meta")
        was_training = self.features.training
        self.features.eval()
        try:
            out = functional_call(self.features, state, (zeros,))
        finally:
            self.features.train(was_training)
        return int(out[0].numel())

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(
                f"PaperCNN3D was built for input_shape={self.input_shape} (its fully connected "
                f"layer is sized for it) but got spatial shape {tuple(x.shape[2:])}; "
                "resize the inputs or build the encoder with the new input_shape"
            )
        return self.head(self.features(x))


class SFCN3D(nn.Module):
    """The Simple Fully Convolutional Network of Peng et al. 2021 (Med. Image Anal. 68:101871).

    Every block but the last is a 3×3×3 convolution, batch norm, 2×2×2 max-pool and ReLU; the
    last is a 1×1×1 convolution, batch norm and ReLU. Global average pooling and dropout give
    the embedding: the pooled ``channels[-1]`` features themselves, or a linear map of them
    when ``embedding_dim`` differs.

    Peng's classifier (a 1×1×1 convolution to soft age-bin labels trained with a KL loss) is
    not part of this encoder: the task head is separate, as for every encoder here. Peng
    average-pools a fixed ``[5, 6, 5]`` window for 160×192×160 inputs; global average pooling
    is the same there and works at any size. Max-pooling rounds odd sizes up (``ceil_mode``),
    which is identical on the paper's even sizes and keeps small inputs from pooling to nothing.

    Args:
        spatial_dims: 3 for volumes, 2 for slices.
        in_channels: input channels (image modalities).
        channels: output channels of each block (Peng: ``(32, 64, 128, 256, 256, 64)``); at
            least two blocks.
        embedding_dim: width of the output features (``out_features``).
        dropout: dropout on the pooled features (Peng: 0.5).

    Examples:
        >>> SFCN3D(channels=(4, 8, 8), embedding_dim=8)(torch.zeros(2, 1, 16, 16, 16)).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = SFCN_CHANNELS,
        embedding_dim: int = 64,
        dropout: float = SFCN_DROPOUT,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        _check_positive("in_channels", [in_channels])
        _check_positive("channels", channels)
        if len(channels) < 2:
            raise ValueError(
                f"SFCN3D needs at least 2 blocks (pooling blocks and a final 1x1x1 block), "
                f"got channels={tuple(channels)}"
            )
        _check_positive("embedding_dim", [embedding_dim])
        _check_dropout(dropout)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_features = embedding_dim
        layers: list[nn.Module] = []
        width = in_channels
        for out in channels[:-1]:
            # a bias before batch norm is cancelled by its mean subtraction
            layers += [
                Convolution(
                    spatial_dims, width, out, kernel_size=3, act=None, norm="batch", bias=False
                ),
                Pool[Pool.MAX, spatial_dims](kernel_size=2, ceil_mode=True),
                Act["relu"](),
            ]
            width = out
        layers.append(
            Convolution(
                spatial_dims,
                width,
                channels[-1],
                kernel_size=1,
                act="relu",
                norm="batch",
                bias=False,
            )
        )
        self.features = nn.Sequential(*layers)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Identity()
            if embedding_dim == channels[-1]
            else nn.Linear(channels[-1], embedding_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        return self.head(self.pool(self.features(x)))


#: The 3D CNN encoders' names (as in the run configuration) and their classes
#: (:data:`neurounlearn.registry.ENCODERS` adds the MLP and the U-Net).
CNN_ENCODERS: dict[CNNEncoderName, type[nn.Module]] = {
    "compact": CompactCNN3D,
    "paper": PaperCNN3D,
    "sfcn": SFCN3D,
}
ENCODERS = CNN_ENCODERS  # the name it had


def build_encoder(
    name: str,
    *,
    input_shape: Sequence[int],
    in_channels: int = 1,
    embedding_dim: int,
    channels: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build the image encoder ``name`` for inputs of spatial shape ``input_shape``.

    ``spatial_dims`` is ``len(input_shape)``. Arguments left as ``None`` take the encoder's own
    defaults; custom ``channels`` without ``strides`` give ``"compact"`` stride 2 at every stage
    and ``"paper"`` Dinsdale's pattern of convolutions per block (two, two, then three).

    Args:
        name: one of ``"compact"``, ``"paper"``, ``"sfcn"``.
        input_shape: spatial shape of the inputs (2 or 3 sizes).
        in_channels: input channels.
        embedding_dim: width of the output features.
        channels: channels per stage/block; ``None`` for the encoder's default.
        strides: per-stage strides; only ``"compact"`` has them.
        dropout: dropout before the embedding layer; ``None`` for the encoder's default
            (0.5 for ``"sfcn"``, 0 for the others).

    Raises:
        ValueError: for an unknown name (the message lists the known ones), ``strides`` given
            to an encoder without them, or pieces that do not agree.

    Examples:
        >>> build_encoder("compact", input_shape=(16, 16, 16), embedding_dim=8).out_features
        8
    """
    check_choice("encoder", name, CNN_ENCODERS)
    if len(input_shape) not in (2, 3):
        raise ValueError(f"input_shape must have 2 or 3 spatial sizes, got {tuple(input_shape)!r}")
    if strides is not None and name != "compact":
        raise ValueError(
            f"strides apply only to the 'compact' encoder; encoder {name!r} pools instead, "
            f"got strides={tuple(strides)}"
        )
    spatial_dims = len(input_shape)
    if name == "compact":
        if strides is None:
            # one stride per stage, whatever the number of stages
            strides = COMPACT_STRIDES if channels is None else (2,) * len(channels)
        if channels is None:
            channels = COMPACT_CHANNELS
        return CompactCNN3D(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            channels=tuple(channels),
            strides=tuple(strides),
            embedding_dim=embedding_dim,
            dropout=0.0 if dropout is None else dropout,
        )
    if name == "paper":
        return PaperCNN3D(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            input_shape=input_shape,
            channels=PAPER_CHANNELS if channels is None else tuple(channels),
            embedding_dim=embedding_dim,
            dropout=0.0 if dropout is None else dropout,
        )
    return SFCN3D(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        channels=SFCN_CHANNELS if channels is None else tuple(channels),
        embedding_dim=embedding_dim,
        dropout=SFCN_DROPOUT if dropout is None else dropout,
    )
