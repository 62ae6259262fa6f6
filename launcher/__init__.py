"""launch: validated start-up and supervision of vLLM on Ascend NPUs."""

__version__ = "0.1.0"
