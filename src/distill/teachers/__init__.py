"""What a teacher gives: logits or top-k log-probs (live or cached), generated text, remote endpoints."""
