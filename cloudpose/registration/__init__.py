"""Registration: the surface model, robust point-to-plane ICP, and the scores of a fit."""
