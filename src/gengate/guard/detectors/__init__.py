"""Built-in detectors. Each module owns one concern and registers through the same registry as plugins."""
