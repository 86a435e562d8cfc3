"""Names of the U-Net's attach points (kept apart from the model so the configuration can
check them without importing torch or MONAI)."""

#: Where confound heads can attach: an encoder level (``encoder0`` at the input's resolution,
#: after the first two convolutions, down to ``encoder3`` at 1/8 of it; their maps also reach
#: the decoder through the skip connections), the deepest encoder features (``bottleneck``,
#: 1/16), or the last decoder features (``final``, before the 1x1x1 classifier).
ATTACH_POINTS = ("encoder0", "encoder1", "encoder2", "encoder3", "bottleneck", "final")

#: Points at the input's full resolution, whose heads halve the map before pooling.
FULL_RESOLUTION = ("encoder0", "final")
