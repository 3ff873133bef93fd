"""Speed benchmark of the pipeline's Transformer against Hugging Face MarianMT (`make bench`)."""
