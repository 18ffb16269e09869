"""Data plane: conditions compiled into matchers, the indexed rule table, a bundle's own tests run on it."""
