"""Training for HMAR / VAR: recipes, token data, losses, the loop, checkpoints (hmar-train, hmar-tokenize)."""
