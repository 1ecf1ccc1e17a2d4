"""Evaluation: benches and their baselines, scene and tracking benches."""
