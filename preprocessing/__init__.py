"""Turning raw item content (text, trailers, images) into model-ready, cached inputs."""
