"""Identity: virtual API keys, JWT bearer tokens, and the Principal they become."""
