"""Reading what clients send: cloud files and payloads to validated (N, 3) arrays, depth images to points."""
