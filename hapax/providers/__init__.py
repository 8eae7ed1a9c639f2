"""Provider adapters and the upstream client."""
