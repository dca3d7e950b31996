"""lmmr1.algos."""
