"""neurounlearn.data."""
