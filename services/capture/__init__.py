"""FlowTarget capture service."""
