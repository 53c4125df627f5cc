"""Knowledge bases for RAG apps: extraction, chunking, versioned storage, permission-aware hybrid retrieval."""
