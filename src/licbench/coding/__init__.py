"""Bitstreams: the container file format and image compress/decompress."""
