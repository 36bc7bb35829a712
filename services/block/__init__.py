"""FlowTarget block service."""
