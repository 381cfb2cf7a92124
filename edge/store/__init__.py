"""Where cached responses live: the RAM tier, the disk tier shared by a POP's workers, and eviction policies."""
