"""FlowTarget store service."""
