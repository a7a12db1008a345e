"""Posting encodings: what an entry's code is, how it is trained and written, and how it is scanned."""
