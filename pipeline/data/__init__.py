"""Data: meshes and their symmetries, synthesized clouds, virtual depth views, bench sets, scenes."""
