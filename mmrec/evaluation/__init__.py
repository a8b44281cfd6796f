"""Full-ranking evaluation of cold items, its baselines, and the per-user metrics."""
