"""The built-in tasks: ART (associative retrieval) and LCD (linear cosine decay)."""
