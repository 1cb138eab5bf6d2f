"""`metadg import aasist`: a clovaai/aasist checkpoint (AASIST.pth, AASIST-L.pth) as a metadg run folder.

The published files are plain state dicts of 229 tensors, loaded with `torch.load(weights_only=True)`
(no code runs). Every published key maps to exactly one key of `aasist_raw` + the `linear` head; a key
left over or missing is an error naming it, so a checkpoint of another model cannot half-load.
"""

from __future__ import annotations

from pathlib import Path

from metadg.importers.run_folder import import_run, renamer, spoof_config

def graph_renames(prefix: str) -> list[tuple[str, str]]:
    """Published AASIST graph modules (the same in clovaai/aasist and SSL_Anti-spoofing) → metadg's, under `prefix`."""
    return [
        (r"^pos_S$", f"{prefix}pos_s"),
        (r"^master1$", f"{prefix}branches.0.master"),
        (r"^master2$", f"{prefix}branches.1.master"),
        (r"^GAT_layer_S\.", f"{prefix}gat_s."),
        (r"^GAT_layer_T\.", f"{prefix}gat_t."),
        (r"^HtrgGAT_layer_ST11\.", f"{prefix}branches.0.htrg1."),
        (r"^HtrgGAT_layer_ST12\.", f"{prefix}branches.0.htrg2."),
        (r"^HtrgGAT_layer_ST21\.", f"{prefix}branches.1.htrg1."),
        (r"^HtrgGAT_layer_ST22\.", f"{prefix}branches.1.htrg2."),
        (r"^pool_S\.", f"{prefix}pool_s."),
        (r"^pool_T\.", f"{prefix}pool_t."),
        (r"^pool_hS1\.", f"{prefix}branches.0.pool_s."),
        (r"^pool_hT1\.", f"{prefix}branches.0.pool_t."),
        (r"^pool_hS2\.", f"{prefix}branches.1.pool_s."),
        (r"^pool_hT2\.", f"{prefix}branches.1.pool_t."),
    ]


#: published module → metadg module, applied to the key prefix (the rest of the key is unchanged)
RENAMES: list[tuple[str, str]] = [
    (r"^first_bn\.", "backbone.first_bn."),
    (r"^encoder\.(\d)\.0\.conv_downsample\.", r"backbone.encoder.\1.skip."),
    (r"^encoder\.(\d)\.0\.", r"backbone.encoder.\1."),
    *graph_renames("backbone."),
    (r"^out_layer\.", "head.proj."),
]

#: attribute names inside the hetero layers that metadg spells out
SUFFIXES = {"att_projM": "att_proj_master", "att_weightM": "att_weight_master",
            "proj_with_attM": "proj_with_att_master", "proj_without_attM": "proj_without_att_master"}


metadg_key = renamer(RENAMES, SUFFIXES)


def import_aasist(checkpoint: str | Path, out_dir: str | Path, preset: str = "AASIST") -> Path:
    """Write a run folder (config.yaml, checkpoints/best, results.json) holding the published weights."""
    model = {"backbone": {"name": "aasist_raw", "preset": preset}, "head": {"name": "linear", "dropout": 0.5}}
    return import_run(checkpoint, out_dir, "AASIST", metadg_key, spoof_config(model),
                      "try --preset AASIST-L or AASIST")
