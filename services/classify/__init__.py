"""FlowTarget classify service."""
