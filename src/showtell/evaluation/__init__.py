"""Evaluation: perplexity (the seed's evaluate) and the COCO caption metrics."""
