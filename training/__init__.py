"""OmniLV training: models, flow matching, DeepSpeed, Ray Train loop, stages, eval, restore."""
