"""Comparing codecs: Bjøntegaard deltas (and, later, anchors and RD plots)."""
