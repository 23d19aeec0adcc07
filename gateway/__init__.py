"""gateway: Grafana's data source HTTP API as a standalone service."""
