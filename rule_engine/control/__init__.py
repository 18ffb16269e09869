"""Control plane, pure (no I/O, no threads): states, strategies, records, transitions, status views."""
