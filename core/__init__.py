"""LayerMerge Studio core: pure functions from a model to a compressed, merged network."""
