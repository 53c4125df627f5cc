"""Evaluation: repeated trials, metrics, paired statistics and the CI regression gate."""
