"""neurounlearn.reporting."""
