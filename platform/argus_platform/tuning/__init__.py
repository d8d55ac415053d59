"""Ray Tune searches: scoring weights over cached candidate probabilities, and training hyper-parameters."""
