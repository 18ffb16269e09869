"""Data plane: the bundle format (models, limits, JSON pre-checks, values, regexes), its schema and signatures."""
