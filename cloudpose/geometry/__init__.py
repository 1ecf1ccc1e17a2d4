"""Geometry: rotations (the row-vector convention, stated once), symmetries, resting poses."""
