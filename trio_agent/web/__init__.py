"""The chat page served at ``GET /`` (one HTML file, no build step, no external assets)."""
