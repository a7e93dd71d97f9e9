"""The attributes world: a tiny Qwen3-VL supervisor trained for the embedded ``attributes`` dataset (``supervisor``,
with its training data in ``data``; the default recipe's build ships in ``builds/``), registered as the named
checkpoint ``attributes-supervisor`` (and judges of lower quality beside it), the world's per-attribute report
(``report``) and GRPO's effect against the judge's quality (``curve``)."""
