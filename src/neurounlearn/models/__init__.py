"""neurounlearn.models."""
