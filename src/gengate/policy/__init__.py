"""Policy: which models a caller may use, how fast, and how much they may spend."""
