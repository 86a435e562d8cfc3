"""neurounlearn.evaluation."""
