"""Backbone kinds beyond timm; each module registers a builder with benchmark.encoder.register_backbone."""
