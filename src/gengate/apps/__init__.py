"""RAG apps: a system prompt, knowledge bases, a guard profile and identity-bound tools behind one model name."""
