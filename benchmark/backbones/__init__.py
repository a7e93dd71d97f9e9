"""Backbone kinds beyond timm; each module registers a builder with benchmark.engine.encoder.register_backbone."""
