//! Baseline fine-tuning methods.
