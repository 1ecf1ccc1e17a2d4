"""Detection: every instance of the known objects in a frame (planes, proposals, votes), tracking."""
