"""Multi-scale VQVAE, VAR and HMAR models (official-checkpoint compatible), sampler, editing and CLI tools.

    import hmar_model as hm
    vqvae = hm.load_model("vqvae")           # official names (Hugging Face cache) or local files
    hmar = hm.load_model("hmar-d16")
    images = hm.sample(hmar, vqvae, labels=[207, 360], cfg=1.7, top_k=1000, top_p=0.99, seed=0)
"""
from .checkpoints import (detect_format, hmar_to_nsp_mp, load_checkpoint, load_model, nsp_mp_to_hmar,
                          official_state_dict, read_state_dict, save_checkpoint)
from .edit import edit_class, inpaint, outpaint
from .fast_sampling import fast_sampler
from .hmar import HMAR, MaskedPrediction, NextScalePrediction, build_hmar, build_hmar_mp, build_hmar_nsp
from .sampling import sample
from .schedules import BENCHMARK_MASK_SCHEDULES, DEFAULT_MASK_SCHEDULE_256, PATCH_NUMS, validate_mask_schedule
from .tiny import demo_models
from .var import VAR, TransformerConfig, build_var
from .vqvae import VQVAE, VQVAEConfig, build_vqvae

__all__ = ["VQVAE", "VQVAEConfig", "build_vqvae", "VAR", "TransformerConfig", "build_var", "NextScalePrediction",
           "MaskedPrediction", "HMAR", "build_hmar_nsp", "build_hmar_mp", "build_hmar", "load_checkpoint",
           "load_model", "read_state_dict", "save_checkpoint", "official_state_dict", "detect_format",
           "nsp_mp_to_hmar", "hmar_to_nsp_mp", "sample", "inpaint", "outpaint", "edit_class", "PATCH_NUMS",
           "DEFAULT_MASK_SCHEDULE_256", "BENCHMARK_MASK_SCHEDULES", "validate_mask_schedule", "demo_models",
           "fast_sampler"]
