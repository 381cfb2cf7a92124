"""Where a client is and which POPs answer it: geo lookup, great-circle distance, the choice."""
