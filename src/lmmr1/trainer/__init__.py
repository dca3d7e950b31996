"""lmmr1.trainer."""
