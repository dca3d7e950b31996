"""lmmr1.data."""
