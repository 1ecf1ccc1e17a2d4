"""Adding an object: from a mesh file to a served package (units, symmetry, view offset, network)."""
