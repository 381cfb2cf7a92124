"""Client location: geo config (:mod:`.config`) and lookups (:mod:`.locate`)."""
