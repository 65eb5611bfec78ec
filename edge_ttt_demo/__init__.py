"""The whole pipeline in one command (`edge-ttt demo`): data, model, broker, fleet, agents, report.

On the real smartwatch recordings shipped inside `seglearn`: train a source model on subjects 1-5
(or reuse the cached one), export it, start a broker (mosquitto when installed, else amqtt inside
this process, or the one given), replay subjects 6-10 as simulated devices, each with its own
drift scenario (the first stays clean), through two live agents: one with the default policy and
one with `source`, the unadapted model, as the yardstick. A collector keeps the default agent's
drift summaries in a fleet dataset and the fleet report is written from it. Agents run as child
processes, exactly as `edge-ttt run` runs on a device.

- `fleet`: which recordings, which drift scenario per device, how predictions are scored.
- `services`: the broker, the agent processes and their configs, the predictions listener.
- `run`: the stages in order, and a clean stop on Ctrl-C.
- `results`: the per-device table.
- `cli`: the `edge-ttt demo` command, which `edge_ttt.cli` mounts by name.
"""


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""
