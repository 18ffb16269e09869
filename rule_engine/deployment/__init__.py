"""Control plane with I/O: the deployment manager, its hooks and background loops."""
