"""Argus Platform: data, sharding, training and evaluation on Ray for ARGUS-style recommenders."""
