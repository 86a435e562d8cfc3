"""neurounlearn.training: strategies, the Lightning system, fit, predict."""

import warnings

# Lightning 2.x emits a deprecation notice about its own internals (LeafSpec) at import time;
# it is noise for our users. Filtered by its exact message, before Lightning is imported.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
