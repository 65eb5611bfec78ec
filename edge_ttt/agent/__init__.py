"""The edge agent: run loop and routing (`loop`), per-stream pipelines (`pipeline`), sinks
(`publisher`, `status`, `checkpoints`) and the configuration that composes their sections (`config`)."""

from edge_ttt.agent.loop import Agent, Message, health

__all__ = ["Agent", "Message", "health"]
