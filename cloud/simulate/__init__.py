"""``edgeloop simulate``: a simulated fleet against the real cloud, measured."""
