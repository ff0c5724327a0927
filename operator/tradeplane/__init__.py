"""tradeplane: a Kubernetes control plane for latency-critical trading services."""
