"""The collector's acknowledgements: which summary ids the fleet has stored, per device.

Topic: the drift topic with the level `ack` appended (`<prefix>/<device>/drift/ack`), QoS 1;
payload: compact JSON `{"format": "edge-ttt-drift-ack", "v": 1, "ids": [...]}`. Kept free of
heavy imports: the agent's configuration checks its topics with `ACK_LEVEL`.
"""

from __future__ import annotations

import json

from edge_ttt.drift.spool import ID

ACK_FORMAT = "edge-ttt-drift-ack"
ACK_VERSION = 1
ACK_LEVEL = "ack"


def ack_topic(topic: str) -> str:
    """Where the collector acknowledges what arrived on the drift topic `topic`."""
    return f"{topic}/{ACK_LEVEL}"


def encode_ack(ids: list[str]) -> bytes:
    return json.dumps({"format": ACK_FORMAT, "v": ACK_VERSION, "ids": ids}, separators=(",", ":")).encode()


def parse_ack(payload: bytes) -> list[str]:
    """The summary ids of an acknowledgement; [] for anything else (never an exception: anyone
    allowed to publish there could send junk, and this runs on paho's network thread). Deep
    nesting raises RecursionError in `json`, not ValueError.

    >>> parse_ack(encode_ack(["a1", "../x"]))
    ['a1']
    >>> parse_ack(b"[" * 100_000), parse_ack(None)
    ([], [])
    """
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError, TypeError, OverflowError):
        return []
    if not isinstance(doc, dict) or doc.get("format") != ACK_FORMAT or doc.get("v") != ACK_VERSION:
        return []
    ids = doc.get("ids")
    return [i for i in ids if isinstance(i, str) and ID.match(i)] if isinstance(ids, list) else []
