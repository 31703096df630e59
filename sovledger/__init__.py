"""sovledger: the command-line entry point that ties the node, clients and tools together."""
