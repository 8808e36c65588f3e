"""``dorado``: the platform launcher on one machine."""
