"""Model source (entrypoint or Hugging Face) + weights -> torch.export -> fx graph, and graph facts read off it."""
