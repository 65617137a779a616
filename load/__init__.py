"""Load tools: the IoT telemetry producer, the demo and the benchmark harness."""
