"""The outer loop: feedback, A/B experiments, traces to datasets, drift, retention."""
