"""Streaming windowing of per-device sensor samples (pure numpy, shared by training, replay and live)."""
