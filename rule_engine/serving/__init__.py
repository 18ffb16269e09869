"""Data plane: routing (the only bucket arithmetic), the serving snapshot, hot-path counting, the evaluator."""
