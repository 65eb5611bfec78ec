"""From the wire to windows: the MQTT transport and its settings, topic routing, the bounded inbox,
the frame codec, the sequencer and the windower (pure numpy, shared by training, replay and live)."""
