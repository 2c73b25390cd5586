"""Datasets (images, speech, text, corpora, user files), augmentation, transfer sets and token batching."""
