"""Posting encodings: what an entry's code is, how it is trained and written, and how it is scanned."""

from spann.codecs.encodings import CODECS, Codec, choose_codec, get_codec

__all__ = ["Codec", "CODECS", "get_codec", "choose_codec"]
