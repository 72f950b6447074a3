"""The stages: feature extraction, head training, fine-tuning, evaluation, prediction and export."""
