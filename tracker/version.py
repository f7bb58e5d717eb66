"""What the same weights compute, as a number: part of every trunk and feature-cache key and of a study's stored
recipe, so that nothing made by an older model is reused. Bump it with any change to the model's arithmetic.
Kept free of torch so that the sweeper plugin, which Hydra imports at every start-up, stays light.

1: first release. 2: the encoder's first residual adds the query with its position, as STARK does.
"""
MODEL_VERSION = 2
