"""Plumbing shared by the agent, the bridge and the model tools.

Settings bases, MQTT and Kafka client factories, wire contracts, logging, metrics and
process lifecycle. This package imports none of ``agent``, ``bridge`` or ``models``.
"""
