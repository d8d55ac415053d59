"""Fine-tuning a pre-trained run on impressions: two-tower pairwise, or a candidate-isolation ranker."""
