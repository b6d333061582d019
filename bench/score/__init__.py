"""Scoring one fit: relabelling, recovery, landing, modes, predictive accuracy and health."""
