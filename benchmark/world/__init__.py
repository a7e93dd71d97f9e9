"""The attributes world: a tiny Qwen3-VL supervisor trained for the embedded ``attributes`` dataset (``supervisor``,
with its training data in ``data``), registered as the named checkpoint ``attributes-supervisor``, and the world's
per-attribute report (``report``)."""
