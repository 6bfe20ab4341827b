"""gradlab inside other training loops (optional extras: `pip install gradlab[lightning]`)."""
