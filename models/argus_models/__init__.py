"""ARGUS-style sequential recommender models: pure torch / TorchRec, no Ray."""
