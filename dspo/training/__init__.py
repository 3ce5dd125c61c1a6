"""Training: the preference fine-tuning loop and what it keeps."""
