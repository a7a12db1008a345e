"""Everything about heads: balanced clustering, the head graph and groups, the pruner, replica assignment."""
