"""neurounlearn.training."""
