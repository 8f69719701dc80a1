"""Synthetic slides, the demo cohorts and the engine's exactness check."""
