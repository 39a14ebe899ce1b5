"""Several localllm replicas behind an existing load balancer (HAProxy)."""
