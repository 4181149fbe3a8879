"""Multi-scale VQVAE, VAR and HMAR models, sampler, editing, trainer and command-line tools."""
