"""FlowTarget's shared contract: event models, subjects, settings, the NATS bus and the service runner."""
