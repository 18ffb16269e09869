"""Control plane: thresholds, verdicts and statistics, the health ledger, the A/B experiment report."""
