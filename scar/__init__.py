"""SCAR: dense per-token RLHF rewards by Shapley credit assignment."""
__version__ = "0.1.0"
