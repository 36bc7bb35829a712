"""FlowTarget command line and local orchestration."""
