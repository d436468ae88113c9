"""Model layer: tokenizer, mixers (Hyena, Mamba, attention), blocks, the DNA language model, converters.

Kept import-light: ``import models.tokenizer`` must not pull in the model code (data loader workers import it).
"""
