"""edgewatch bridge: MQTT → Kafka forwarding through a durable spool; models back to MQTT."""
