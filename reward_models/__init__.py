"""Scorers: one interface for CLIP score, PickScore, aesthetic, the shapes oracle and the step-aware model. Imports nothing of ours."""
