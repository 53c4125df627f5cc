"""Model providers: one OpenAI-compatible upstream client, the offline provider, the local small LLM."""
