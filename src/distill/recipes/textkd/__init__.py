"""`distill textkd`: students trained on a teacher's generated text (sequence-level, step-by-step)."""
