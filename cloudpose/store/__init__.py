"""The object package format and the stores that hold packages: the one place that reads and writes them."""
