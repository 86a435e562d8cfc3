"""neurounlearn: unlearn site, scanner and other confounds from deep models of brain MRI."""

__version__ = "0.1.0"
