"""tb package."""
