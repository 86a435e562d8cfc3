"""Names of the U-Net's attach points (kept apart from the model so the configuration can
check them without importing torch or MONAI)."""

#: Where confound heads can attach: the deepest encoder features, or the last decoder features.
ATTACH_POINTS = ("bottleneck", "final")
