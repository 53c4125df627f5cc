"""Guardrails as middleware: detectors over user input, retrieved context and model output, and the actions
(block with a template, redact, flag, escalate) that policies map their findings to."""
