"""Where workers run: Docker containers, Kubernetes pods, local processes."""
