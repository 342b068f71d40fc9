"""``edgeloop demo --scenario chaos``: the loop under a seeded schedule of real faults."""
