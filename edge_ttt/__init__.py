"""edge-ttt: streaming test-time adaptation of sensor models on edge devices."""

__version__ = "0.1.0"
