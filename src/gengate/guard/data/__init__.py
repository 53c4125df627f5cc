"""Package data for guard detectors (word lists); see docs/guard-pii.md for sources and licences."""
