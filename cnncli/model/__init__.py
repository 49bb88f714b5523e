"""A `Config` → a `keras.Model`: builder, backbones, geometry, the input plan, preprocessing,
the one batched predict loop and the scores of its predictions."""
