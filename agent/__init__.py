"""edgewatch agent: scores MQTT messages with int8 TFLite models and publishes the results."""
