"""Observability edges: JSON views of a deployment, Prometheus collectors, webhooks, bundle watching."""
