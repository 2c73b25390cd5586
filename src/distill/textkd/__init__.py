"""Distillation from teacher-generated text: a teacher reached as text (a local causal LM or any
OpenAI-compatible endpoint) writes responses or rationales, which become ordinary training data
(sequence-level KD, distilling step-by-step)."""
