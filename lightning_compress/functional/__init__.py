"""Pure tensor algorithms of the four methods, one module per paper (no Lightning imports)."""
