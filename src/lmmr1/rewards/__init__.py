"""lmmr1.rewards."""
