"""FlowTarget's services: capture, classify, store, block."""
